#!/bin/sh
# The `models` job of docker/compose.yaml (entry point of the trainer image), and the `replay`
# load generator.
#
#   explore-models            build or load the models into $MODELS_DIR, publish the novelty table
#   explore-models replay ... `explore replay` on the same data as the models (extra args passed on)
#   explore-models publish    train a new model set (RETRAIN_LEVELS) and publish it to the running workers
#   explore-models rollback   serve the model set served before the current one again
#   explore-models fold       publish the items of $NEW_ITEMS (JSON lines: item_id, title, text fields) on the
#                             items topic, then fold them into the models job's set (set 1, which must be the one
#                             served) and publish the result: `explore items fold --publish`
#
# Data: a MovieLens directory (100K, 1M, latest, latest-small) mounted at $DATA_DIR; when that
# directory is empty, the planted synthetic data set (the same one for training and replay).
#
# $MODELS_DIR after a run (a volume shared with Triton and the workers):
#   catalog/              the interest-cluster catalog          (EXPLORE_CATALOG of the workers)
#   repository/           the Triton model repository          (served by Triton, EXPLORE_REPOSITORY)
#   seqrec/model.pt       SASRec checkpoint
#   novelty/              novelty LM; novelty/table.jsonl is the precomputed novelty table
#   mixture/              the fitted mixture of experts (repository/explorer serves it)
#   COMPLETE              written last; its presence means the above is whole
#
# Settings (environment): RETRAIN=1 rebuilds even when COMPLETE exists; MIXTURE=0 skips the mixture of
# experts (the workers then serve the LM's table and seqrec); CLUSTER_LEVELS (8,32);
# SEQREC_TRAIN_ARGS / NOVELTY_TRAIN_ARGS (extra flags, word-split); SEQREC_BACKEND=python|onnxruntime
# (onnxruntime: Triton's native onnxruntime backend with TensorRT, from config.gpu.pbtxt.example);
# PREBUILT_DIR: a directory with catalog/ and repository/ (and optionally novelty-table.jsonl)
# to use instead of training.
set -eu

MODELS_DIR=${MODELS_DIR:-/models}
DATA_DIR=${DATA_DIR:-/data}
PREBUILT_DIR=${PREBUILT_DIR:-/prebuilt}
SOURCES=${EXPLORE_TRITON_MODELS:-/app/triton_models}
TOPIC=${EXPLORE_NOVELTY_TOPIC:-novel-interests}

log() { printf '[models] %s\n' "$*"; }

MODE=build
if [ "${1:-}" = "replay" ]; then
    MODE=replay
    shift
elif [ "${1:-}" = "publish" ] || [ "${1:-}" = "rollback" ] || [ "${1:-}" = "fold" ]; then
    MODE=$1
    shift
fi
if [ "$MODE" != "replay" ] && [ "$#" -gt 0 ]; then
    log "unknown arguments: $* (run without arguments, or: replay [explore replay flags], publish, rollback, fold)"
    exit 2
fi

if [ "$MODE" = "rollback" ]; then
    exec explore models rollback
fi

if [ "$MODE" = "fold" ]; then
    # New items into slates without retraining (docs/design/lifecycle.md): placed from their text under the
    # models job's catalog, published, then the set grown by them (catalog, SASRec's cold rows from their text,
    # LM, explorer) published as the next model set.
    items=$(mktemp --suffix=.jsonl)
    printf '%s\n' "${NEW_ITEMS:?set NEW_ITEMS to the new items, JSON lines}" > "$items"
    explore items publish --catalog "$MODELS_DIR/catalog" "$items"
    mixture=$(ls -d "$MODELS_DIR"/mixture/level-* 2>/dev/null | head -n 1 || true)
    exec explore items fold --catalog "$MODELS_DIR/catalog" --checkpoint "$MODELS_DIR/seqrec/model.pt" \
        --generator "$MODELS_DIR/repository/interest_generator/1" ${mixture:+--mixture "$mixture"} \
        --out "$MODELS_DIR/fold/$(date -u +%Y%m%dT%H%M%SZ)" --table "$MODELS_DIR/novelty/table.jsonl" --publish
fi

# The data flags every explore command gets: the mounted dataset, or the synthetic one.
if [ -d "$DATA_DIR" ] && [ -n "$(ls -A "$DATA_DIR" 2>/dev/null)" ]; then
    set -- "$@" --data "$DATA_DIR"
    DATA_DESC="dataset $DATA_DIR"
else
    set -- "$@" --synthetic
    DATA_DESC="synthetic data ($DATA_DIR is empty)"
fi

if [ "$MODE" = "replay" ]; then
    log "replaying $DATA_DESC to ${KAFKA_BOOTSTRAP:?set KAFKA_BOOTSTRAP}"
    exec explore replay --bootstrap "$KAFKA_BOOTSTRAP" "$@"
fi
# From here on "$@" is exactly the data flags.

publish_table() {  # $1: a table.jsonl written by `explore novelty precompute`
    log "publishing $1 to the compacted topic $TOPIC"
    python - "$1" "$TOPIC" <<'EOF'
import json
import os
import sys

from streams.wiring.table_topic import publish_table

path, topic = sys.argv[1], sys.argv[2]
with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
print(f"[models] published {publish_table(os.environ['KAFKA_BOOTSTRAP'], topic, rows):,} contexts")
EOF
}

train_set() {  # $1: a directory, $2: the catalog's cluster counts, then the data flags: a whole model set in $1
    dir=$1 levels=$2
    shift 2
    mkdir -p "$dir/seqrec"
    explore clusters build "$@" --levels "$levels" --out "$dir/catalog" --quiet
    # A text part (`--text tfidf`), so that new items can be folded into the set later (`fold`); SEQREC_TRAIN_ARGS
    # may say otherwise (the last flag wins).
    # shellcheck disable=SC2086  # the *_ARGS variables are flag lists, split on purpose
    explore seqrec train "$@" --catalog "$dir/catalog" --out "$dir/seqrec/model.pt" --quiet --text tfidf \
        ${SEQREC_TRAIN_ARGS:-}
    explore seqrec export --checkpoint "$dir/seqrec/model.pt" --catalog "$dir/catalog" --repository "$dir/repository"
    # shellcheck disable=SC2086
    explore novelty train "$@" --catalog "$dir/catalog" --out "$dir/novelty" --quiet ${NOVELTY_TRAIN_ARGS:-}
    explore novelty export --model "$dir/novelty" --repository "$dir/repository"
    if [ "${MIXTURE:-1}" = "1" ]; then
        # The mixture of experts the workers then serve (`explorer`): a second SASRec, trained only before
        # the novelty split's validation moments, scores them to fit the weights; the LM's level.
        # shellcheck disable=SC2086
        explore seqrec train "$@" --catalog "$dir/catalog" --until-novelty-valid --out "$dir/seqrec/valid.pt" \
            --quiet --text tfidf ${SEQREC_TRAIN_ARGS:-}
        explore novelty mix "$@" --catalog "$dir/catalog" --seqrec-valid "$dir/seqrec/valid.pt" \
            --seqrec "$dir/seqrec/model.pt" --model "$dir/novelty" --out "$dir/mixture"
        explore novelty export-mixture --mixture "$(ls -d "$dir"/mixture/level-* | head -n 1)" \
            --catalog "$dir/catalog" --repository "$dir/repository" --m "${EXPLORE_M:-3}"
    fi
    explore novelty precompute "$@" --catalog "$dir/catalog" --model "$dir/novelty" --out "$dir/novelty/table.jsonl" \
        --quiet
}

if [ "$MODE" = "publish" ]; then
    # A new model set beside the served one (docs/design/lifecycle.md): trained into a directory of its own,
    # then published (catalog into catalogs/, models as the next Triton version, its table on its own topic);
    # the workers switch to it at a batch boundary.
    NEW="$MODELS_DIR/retrain/$(date -u +%Y%m%dT%H%M%SZ)"
    log "training a new model set on $DATA_DESC (levels ${RETRAIN_LEVELS:-8,24}) in $NEW"
    train_set "$NEW" "${RETRAIN_LEVELS:-8,24}" "$@"
    exec explore models publish --catalog "$NEW/catalog" --staged "$NEW/repository" --table "$NEW/novelty/table.jsonl"
fi

set_seqrec_backend() {  # idempotent: the repository's seqrec as $SEQREC_BACKEND says
    dest="$MODELS_DIR/repository/seqrec"
    case "${SEQREC_BACKEND:-python}" in
        python)
            cp "$SOURCES/seqrec/config.pbtxt" "$dest/config.pbtxt"
            cp "$SOURCES/seqrec/1/model.py" "$dest/1/model.py" ;;
        onnxruntime)
            cp "$SOURCES/seqrec/config.gpu.pbtxt.example" "$dest/config.pbtxt"
            rm -f "$dest/1/model.py" ;;
        *)
            log "SEQREC_BACKEND must be python or onnxruntime, not ${SEQREC_BACKEND}"; exit 2 ;;
    esac
    log "seqrec served by Triton's ${SEQREC_BACKEND:-python} backend"
}

if [ -f "$MODELS_DIR/COMPLETE" ] && [ "${RETRAIN:-0}" != "1" ]; then
    log "reusing the models in $MODELS_DIR ($(cat "$MODELS_DIR/COMPLETE")); RETRAIN=1 rebuilds them"
    set_seqrec_backend
    if [ -f "$MODELS_DIR/novelty/table.jsonl" ]; then
        publish_table "$MODELS_DIR/novelty/table.jsonl"
    fi
    exit 0
fi

# Build into a staging directory, then swap: a failed run leaves the previous models in place.
STAGE="$MODELS_DIR/.staging"
rm -rf "$STAGE"
mkdir -p "$STAGE"

if [ -d "$PREBUILT_DIR/catalog" ] && [ -d "$PREBUILT_DIR/repository" ]; then
    log "loading the prebuilt catalog and repository from $PREBUILT_DIR"
    cp -R "$PREBUILT_DIR/catalog" "$STAGE/catalog"
    cp -R "$PREBUILT_DIR/repository" "$STAGE/repository"
    if [ -f "$PREBUILT_DIR/novelty-table.jsonl" ]; then
        mkdir -p "$STAGE/novelty"
        cp "$PREBUILT_DIR/novelty-table.jsonl" "$STAGE/novelty/table.jsonl"
    fi
    ORIGIN="prebuilt from $PREBUILT_DIR"
    PUBLISHED=0
else
    log "training on $DATA_DESC"
    train_set "$STAGE" "${CLUSTER_LEVELS:-8,32}" "$@"
    publish_table "$STAGE/novelty/table.jsonl"
    ORIGIN="trained on $DATA_DESC"
    PUBLISHED=1  # above, before the swap: the old table stays until the new one is complete
fi

for name in catalog repository seqrec novelty mixture; do
    rm -rf "${MODELS_DIR:?}/$name"
    if [ -e "$STAGE/$name" ]; then mv "$STAGE/$name" "$MODELS_DIR/$name"; fi
done
rm -rf "$STAGE"
set_seqrec_backend
if [ "$PUBLISHED" = "0" ] && [ -f "$MODELS_DIR/novelty/table.jsonl" ]; then
    publish_table "$MODELS_DIR/novelty/table.jsonl"
fi
echo "$ORIGIN, $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$MODELS_DIR/COMPLETE"
log "done: $(cat "$MODELS_DIR/COMPLETE")"
