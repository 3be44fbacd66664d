"""Runs RecBole's SASRec inside RecBole's own virtualenv (see recbole_peer.py); prints JSON last.

Args: data_dir dataset_name max_epochs max_len threads [checkpoint]. With a checkpoint (a run cut
off before it finished), nothing trains: that model is evaluated on the test split.
"""

import json
import sys

import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed

data_dir, name = sys.argv[1], sys.argv[2]
epochs, max_len, threads = (int(v) for v in sys.argv[3:6])
torch.set_num_threads(threads)
config = Config(model="SASRec", dataset=name, config_dict={
    "data_path": data_dir, "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "MAX_ITEM_LIST_LENGTH": max_len,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
    "metrics": ["Hit", "NDCG", "MRR"], "topk": [10], "valid_metric": "NDCG@10", "loss_type": "CE",
    "train_neg_sample_args": None, "epochs": epochs, "stopping_step": 10, "hidden_size": 64, "n_layers": 2,
    "n_heads": 2, "learning_rate": 0.001, "train_batch_size": 256, "seed": 0, "reproducibility": True,
    "show_progress": False, "device": "cpu", "use_gpu": False, "checkpoint_dir": data_dir + "/saved",
})
# RecBole's sine.py turns anomaly detection on at import, slowing sequential models ~1.8x.
torch.autograd.set_detect_anomaly(False)
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
model = SASRec(config, train_data.dataset).to(config["device"])
trainer = Trainer(config, model)
valid_ndcg = []
original = trainer._valid_epoch


def tracked(*args, **kwargs):  # record the validation curve
    score, result = original(*args, **kwargs)
    valid_ndcg.append(round(float(score), 4))
    return score, result


trainer._valid_epoch = tracked
if len(sys.argv) > 6:
    test = trainer.evaluate(test_data, load_best_model=True, model_file=sys.argv[6], show_progress=False)
else:
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
best = max(range(len(valid_ndcg)), key=valid_ndcg.__getitem__) + 1 if valid_ndcg else 0
print(json.dumps({**{k: float(v) for k, v in test.items()}, "epochs_run": len(valid_ndcg), "best_epoch": best,
                  "valid_ndcg": valid_ndcg}))
