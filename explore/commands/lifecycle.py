"""The catalog's and the models' life while the engine runs (docs/design/lifecycle.md): `explore items publish`
places items newer than the catalog in a cluster from their text; `explore models publish | rollback | list`
rolls a complete model set out to every worker and back."""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from explore.commands.common import add_dataset_args, dataset_from_args, engine_settings


def register(sub: argparse._SubParsersAction) -> None:
    register_items(sub)
    register_models(sub)


def register_models(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="publish a model set to the running workers, roll it back, list the sets",
                            description="A model set is a catalog, its exported models and their novelty table. "
                                        "`publish` writes one as the next Triton version beside the served one and "
                                        "tells every worker to switch to it at a batch boundary; `rollback` returns "
                                        "to the set served before. Settings (as the worker's: $EXPLORE_CONFIG, "
                                        "EXPLORE_*): repository (the Triton repository the workers and Triton share), "
                                        "catalogs (where each set's catalog is kept), the broker and topics.")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = msub.add_parser("publish", help="publish a new model set and make it the one served",
                        description="Copies the catalog into the catalogs directory, the staged export's models "
                                    "as version N of each Triton model (Triton keeps every version loaded), "
                                    "asks Triton to load them (--triton-url; Triton in explicit model control), "
                                    "publishes the table on the set's own topic, places published items again "
                                    "under the new catalog, then writes the set's manifest and makes it served.")
    p.add_argument("--catalog", type=Path, required=True, help="the new set's catalog directory")
    p.add_argument("--staged", type=Path, required=True,
                   help="a model repository the new set's models were exported into (`explore seqrec export`, "
                        "`explore novelty export`, optionally `explore novelty export-mixture`), version 1")
    p.add_argument("--table", type=Path, default=None,
                   help="its novelty table rows (`explore novelty precompute --out`); default: none, the workers "
                        "fill the table with live answers")
    p.add_argument("--triton-url", default=None,
                   help="Triton's gRPC host:port, to load the new versions (default: the setting triton_url; "
                        "empty: the files are written and no Triton is asked)")
    p.set_defaults(func=cmd_models_publish)
    r = msub.add_parser("rollback", help="serve the set served before the current one again")
    r.set_defaults(func=cmd_models_rollback)
    li = msub.add_parser("list", help="the published sets and the one served")
    li.set_defaults(func=cmd_models_list)
    pr = msub.add_parser("prune", help="remove the sets no rollback can reach any more",
                         description="Removes every published set that is neither served nor among the last "
                                     "KEEP - 1 sets served before it: its Triton versions (Triton reloads the models "
                                     "and unloads them), its manifest and its catalog when no kept set uses it. "
                                     "Rollbacks then reach only the kept sets. Set 1, the workers' configured set, "
                                     "is never removed. Its table topic stays (delete it with Kafka's tools).")
    pr.add_argument("--keep", type=int, default=3, help="sets kept: the served one and the KEEP - 1 before it")
    pr.add_argument("--triton-url", default=None, help="Triton's gRPC host:port (default: the setting triton_url)")
    pr.set_defaults(func=cmd_models_prune)


def cmd_models_publish(args: argparse.Namespace) -> int:
    from streams.wiring.model_sets import publish_set

    cfg = engine_settings()
    rows = None
    if args.table is not None:
        if not args.table.is_file():
            raise FileNotFoundError(f"--table {args.table}: no such file")
        rows = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
    url = cfg.triton_url if args.triton_url is None else args.triton_url
    done = publish_set(cfg, args.catalog, args.staged, rows, url)
    print(f"set {done.serving.number} is served now (before it: {list(done.serving.history)}); workers switch at "
          f"their next batch once they have loaded it (`explore_serving_set`)")
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from streams.wiring.model_sets import rollback

    done = rollback(engine_settings())
    print(f"set {done.serving.number} is served again (before it: {list(done.serving.history)})"
          + (f"; {done.items_placed} item(s) placed again under its catalog" if done.items_placed else ""))
    return 0


def cmd_models_prune(args: argparse.Namespace) -> int:
    from streams.wiring.model_sets import prune

    cfg = engine_settings()
    gone = prune(cfg, args.keep, cfg.triton_url if args.triton_url is None else args.triton_url)
    print(f"removed set(s) {gone}" if gone else f"nothing to remove: at most {args.keep} set(s) besides set 1")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from streams.core.model_sets import FIRST_SET
    from streams.wiring.model_sets import read_sets

    cfg = engine_settings()
    view = read_sets(cfg)
    serving = view.wanted()
    print(f"{'set':>4}  {'catalog':14} {'level':>5} {'table rows':>10}  published")
    if FIRST_SET not in view.manifests:
        print(f"{FIRST_SET:>4}  {'(configured)':14} {'':>5} {'':>10}  the workers' settings"
              + ("   <- served" if serving == FIRST_SET else ""))
    for n, m in sorted(view.manifests.items()):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.ts))
        mark = "   <- served" if n == serving else ""
        print(f"{n:>4}  {m.catalog:14} {m.level:>5} {m.table_rows:>10}  {when}{mark}")
    if view.serving is not None:
        print(f"served before: {list(view.serving.history)}; last change: {view.serving.reason}")
    return 0


def register_items(sub: argparse._SubParsersAction) -> None:
    items = sub.add_parser("items", help="publish new items to the running engine (the items topic)",
                           description="Items newer than the catalog: each is placed in a cluster from its text "
                                       "(the catalog build's text embedding, nearest cluster centroid) and "
                                       "published on the compacted items topic, which every worker follows. "
                                       "docs/design/lifecycle.md says what the engine then does with them.")
    isub = items.add_subparsers(dest="items_command", metavar="ACTION", required=True)
    p = isub.add_parser("publish", help="place new items from their text and publish them")
    p.add_argument("--catalog", type=Path, required=True, help="the catalog directory the engine serves")
    p.add_argument("new_items", type=Path, metavar="NEW_ITEMS",
                   help="the new items: CSV with a header (item_id, title, then any text columns such as genres) "
                        "or JSON lines with the same fields; an item's text is its title and other fields joined")
    p.add_argument("--level", type=int, default=None,
                   help="the catalog level the engine serves (the SASRec's level); default: the finest")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP)")
    p.add_argument("--topic", default=None, help="the items topic (default: the engine setting items_topic)")
    p.add_argument("--dry-run", action="store_true", help="print the placements, publish nothing")
    add_dataset_args(p)  # only to fit the placement when the catalog has none (catalogs built before it)
    p.set_defaults(func=cmd_items_publish)
    f = isub.add_parser("fold", help="stage the next model set: the served one grown by the published items",
                        description="A published item is applied to users' states at once, but enters slates only "
                                    "through a model set whose catalog holds it. This stages that set without "
                                    "retraining: the catalog with the items appended (same clusters), the SASRec "
                                    "with them as cold items (vectors from their text: a text model, `explore "
                                    "seqrec train --text tfidf`), the LM under the grown catalog and, with "
                                    "--mixture, the explorer. Then `explore models publish` rolls it out (or "
                                    "--publish here).")
    f.add_argument("--catalog", type=Path, required=True, help="the served set's catalog directory")
    f.add_argument("--checkpoint", type=Path, required=True, help="the SASRec checkpoint the served seqrec came from")
    f.add_argument("--generator", type=Path, required=True,
                   help="the served interest_generator's version directory (<repository>/interest_generator/<N>)")
    f.add_argument("--mixture", type=Path, default=None,
                   help="the fitted mixture level the served explorer came from (`explore novelty mix`'s level "
                        "directory); default: the new set has no explorer")
    f.add_argument("--new-items", type=Path, default=None,
                   help="the items to add (a file as for `publish`); default: every item of the items topic placed "
                        "under --catalog that it does not hold")
    f.add_argument("--out", type=Path, required=True, help="where the staged set goes (catalog/, repository/)")
    f.add_argument("--top-n", type=int, default=20, help="slate candidates the exported seqrec returns")
    f.add_argument("--publish", action="store_true", help="publish the staged set at once (`explore models publish`)")
    f.add_argument("--table", type=Path, default=None, help="with --publish: the novelty table rows to publish with it")
    f.set_defaults(func=cmd_items_fold)


def cmd_items_fold(args: argparse.Namespace) -> int:
    from exporters.grow_set import NewItem, grow_set
    from interests.clusters.catalog import Catalog

    catalog = Catalog.load(args.catalog)
    if args.new_items is not None:
        new = [NewItem(i, title, text) for i, title, text in read_items(args.new_items)]
    else:
        from streams.wiring.model_sets import published_items

        level = json.loads((args.generator / "decoder.json").read_text()).get("level")
        level = catalog.finest if level is None else int(level)
        new = [NewItem(i.item_id, i.title, i.text, i.cluster) for i in published_items(engine_settings())
               if (i.catalog, i.level) == (catalog.version, level)]
    known = set(catalog.item_ids)
    new = [i for i in new if i.item_id not in known]
    if not new:
        print(f"nothing to fold: no published item outside catalog {catalog.version}")
        return 0
    grown = grow_set(args.catalog, new, args.checkpoint, args.generator, args.out, args.mixture, args.top_n)
    print(f"staged in {args.out}: catalog {grown.catalog.version} = {catalog.version} + {grown.added} item(s); seqrec "
          f"parity max {grown.seqrec.parity.max_abs_score_diff:.1e}"
          + (f", explorer parity max {grown.explorer.parity.max_abs_score_diff:.1e}" if grown.explorer else
             ", no explorer (no --mixture)"))
    if not args.publish:
        print(f"next: explore models publish --catalog {grown.catalog_dir} --staged {grown.repository}"
              + (f" --table {args.table}" if args.table else ""))
        return 0
    return cmd_models_publish(argparse.Namespace(catalog=grown.catalog_dir, staged=grown.repository, table=args.table,
                                                 triton_url=None))


def read_items(path: Path) -> list[tuple[str, str, str]]:
    """(item id, title, text) of each row of a CSV (with a header) or JSON-lines file; the text is every
    non-empty field but the id, joined by " | " as a dataset joins its text fields (`Dataset.text_of`)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file of new items")
    if path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not str(row.get("item_id") or "").strip():
            raise ValueError(f"{path}: item {n} has no item_id (columns: item_id, title, then text fields)")
        fields = [str(v) for k, v in row.items() if k != "item_id" and v not in (None, "")]
        out.append((str(row["item_id"]).strip(), str(row.get("title") or ""), " | ".join(fields)))
    return out


def cmd_items_publish(args: argparse.Namespace) -> int:
    from interests.clusters.catalog import Catalog
    from interests.clusters.placement import fit_placer, load_placement, save_placement
    from streams.core.items import place_items

    catalog = Catalog.load(args.catalog)
    level = catalog.finest if args.level is None else args.level
    if not 0 <= level < len(catalog.levels):
        raise ValueError(f"--level {level}: the catalog has levels 0 to {catalog.finest}")
    placer = load_placement(args.catalog, catalog)
    if placer is None:
        if not (args.data or args.interactions or args.synthetic):
            raise ValueError(f"{args.catalog} has no placement.npz (built before placement existed): pass the "
                             "data the catalog was built from (--data, or --interactions with --items) to fit it")
        placer = fit_placer(dataset_from_args(args), catalog)
        print(f"fitted the text placement ({placer.encoder}, {placer.n_fitted:,} items): "
              f"{save_placement(args.catalog, placer)}")
    new = read_items(args.new_items)
    known = set(catalog.item_ids)
    already = [i for i, _, _ in new if i in known]
    if already:
        print(f"{len(already)} item(s) are in the catalog already and keep its cluster: {', '.join(already[:5])}")
    new = [x for x in new if x[0] not in known]
    published = place_items(new, placer, catalog.version, level, time.time())
    descriptions = catalog.descriptions(level)
    for item in published[:20]:
        print(f"  {item.item_id:>12}  -> cluster {item.cluster:3d} (distance {item.distance:.3f}) "
              f"{descriptions[item.cluster][:50]:50}  {item.title[:40]}")
    if len(published) > 20:
        print(f"  ... and {len(published) - 20} more")
    if args.dry_run:
        print(f"dry run: {len(published)} item(s) placed, none published")
        return 0
    cfg = engine_settings()
    from streams.wiring.items_topic import publish_items

    bootstrap = args.bootstrap or cfg.bootstrap
    topic = args.topic or cfg.items_topic
    sent = publish_items(bootstrap, topic, published, cfg.kafka_security(), cfg.replication_factor,
                         cfg.min_insync_replicas)
    print(f"published {sent} item(s) to {topic!r} on {bootstrap} under catalog {catalog.version}, level {level}")
    return 0
