"""`esc-dist human-eval SUB`: blinded pairwise human evaluation of two systems (docs/human_eval.md).

The subcommands are listed in ``SUBCOMMANDS`` (same :class:`Command` entries as the top-level
table); each gets ``--config`` too, so that recipe problems and overrides behave as everywhere.
"""

from __future__ import annotations

import argparse
import sys

from .common import Command, recipe_of


def run_build(args: argparse.Namespace) -> int:
    from ..humaneval import DB_FILE, ITEMS_FILE, KEY_FILE, STUDY_FILE
    from ..humaneval.build import build_study

    recipe = recipe_of(args)
    meta = build_study(
        args.pred_a,
        args.pred_b,
        args.names,
        args.out,
        items=args.items,
        seed=args.seed,
        data_dir=args.data,
        split=recipe.infer.split,
    )
    n = meta["counts"]
    print(
        f"built a study of {n['items']} items ({n['turns_in_common']} turns predicted by "
        f"both) in {args.out}: {ITEMS_FILE} (public), {STUDY_FILE}, {DB_FILE} and {KEY_FILE} "
        "(the unblinding key: keep it from the annotators)"
    )
    print(f"next: esc-dist human-eval add-annotator {args.out} NAME")
    return 0


def build_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred_a", metavar="PRED_A.jsonl", help="system 1's predictions (esc-dist infer)")
    p.add_argument(
        "pred_b", metavar="PRED_B.jsonl", help="system 2's predictions, of the same turns"
    )
    p.add_argument(
        "--names",
        required=True,
        metavar="NAME_A,NAME_B",
        help="the two systems' names (only key.json and the report show them)",
    )
    p.add_argument("--out", required=True, metavar="STUDY", help="the study directory (new)")
    p.add_argument(
        "--items", type=int, metavar="N", help="a seeded sample of N turns (default: every turn)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sample, the item order, the sides and every annotator's "
        "order (default 0)",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        help="prepared data (esc-dist prepare): the dialogue histories of split "
        "infer.split, needed unless the prediction records hold a 'history'",
    )


def run_add_annotator(args: argparse.Namespace) -> int:
    from ..humaneval.study import Study

    recipe_of(args)
    token = Study.open(args.study).add_annotator(args.name, rotate=args.rotate)
    what = "new token" if args.rotate else "token"
    print(
        f"{what} of annotator {args.name} (shown once, only its hash is stored; give it to "
        "them privately):",
        file=sys.stderr,
    )
    print(token)
    return 0


def add_annotator_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="the study directory")
    p.add_argument("name", metavar="NAME", help="the annotator's name (letters, digits, . _ @ : -)")
    p.add_argument(
        "--rotate",
        action="store_true",
        help="give an existing annotator a new token (the old one stops working; "
        "their judgments stay)",
    )


def run_serve(args: argparse.Namespace) -> int:
    from ..app.annotate import serve_study
    from ..humaneval.study import Study

    recipe_of(args)
    from ..app import is_loopback

    study = Study.open(args.study)
    if not is_loopback(args.host):
        print(
            f"esc-dist human-eval serve: note: --host {args.host} lets other machines reach "
            "the page over plain HTTP: put it behind a reverse proxy with TLS for remote "
            "annotators (docs/human_eval.md, Security)",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"annotation page of {args.study} on http://{args.host}:{args.port}/ (Ctrl-C stops "
        "it; every submitted item is already saved)",
        flush=True,
    )
    serve_study(study, host=args.host, port=args.port)
    return 0


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="the study directory")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; a server "
        "address such as 0.0.0.0 to let annotators in from other machines)",
    )
    p.add_argument("--port", type=int, default=7860)


def run_report(args: argparse.Namespace) -> int:
    from ..humaneval.report import FIGURE, markdown, write_report

    recipe_of(args)
    report, out = write_report(
        args.study, args.out, n_resamples=args.bootstrap, seed=args.seed, key_path=args.key
    )
    print(markdown(report))
    print(f"wrote report.json, report.md and {FIGURE} to {out}")
    return 0


def report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="the study directory")
    p.add_argument("--out", metavar="DIR", help="output directory (default: STUDY/report)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        metavar="N",
        help="bootstrap resamples of the items for the 95%% intervals (default 2000; 0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument(
        "--key",
        metavar="KEY.json",
        help="the unblinding key, when it is kept outside the study (default: STUDY/key.json)",
    )


def run_export_labelstudio(args: argparse.Namespace) -> int:
    from ..humaneval.labelstudio import CONFIG, TASKS, export_tasks

    recipe_of(args)
    out = export_tasks(args.study, args.out)
    print(
        f"wrote {TASKS} (import them into a Label Studio project) and {CONFIG} (its labelling "
        f"interface) to {out}"
    )
    return 0


def export_labelstudio_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="the study directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")


def run_import_labelstudio(args: argparse.Namespace) -> int:
    from ..humaneval.labelstudio import import_export

    recipe_of(args)
    c = import_export(args.study, args.export)
    print(
        f"imported {c['annotations']} annotation(s) of {c['annotators']} Label Studio "
        f"annotator(s): {c['new']} new, {c['replaced']} replaced, {c['unchanged']} unchanged; "
        f"left out {c['skipped']['cancelled']} cancelled and {c['skipped']['incomplete']} "
        "incomplete"
    )
    return 0


def import_labelstudio_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="the study directory")
    p.add_argument("export", metavar="EXPORT.json", help="a Label Studio JSON export")


SUBCOMMANDS = [
    Command(
        "build",
        run_build,
        "build a blinded pairwise study from two predictions files",
        "Pair two systems' replies to the same test turns as blinded items (a seeded side "
        "per item) and write STUDY/items.jsonl (public), key.json (the unblinding key), "
        "study.json and an empty judgments.sqlite.",
        build_arguments,
    ),
    Command(
        "add-annotator",
        run_add_annotator,
        "add an annotator and print their token once",
        "Create an annotator with a random access token, print the token once on stdout "
        "and store only its salted hash.",
        add_annotator_arguments,
    ),
    Command(
        "serve",
        run_serve,
        "serve the annotation page (Gradio)",
        "The annotation page: an annotator signs in with their token and judges the items "
        "in their own order, resuming where they stopped; each submitted item is saved in "
        "one transaction. Never shows which system wrote which reply. Binds 127.0.0.1 "
        "unless --host says otherwise.",
        serve_arguments,
    ),
    Command(
        "report",
        run_report,
        "unblind and summarise the judgments",
        "Win/tie/lose of system 1 against system 2 per criterion with bootstrap 95% "
        "intervals over items, Fleiss' kappa and Krippendorff's alpha; writes report.json, "
        "report.md and a chart.",
        report_arguments,
    ),
    Command(
        "export-labelstudio",
        run_export_labelstudio,
        "write the items as Label Studio tasks with a labelling config",
        "Write tasks.json (one task per item, no system names) and labeling_config.xml "
        "(five A/tie/B choices).",
        export_labelstudio_arguments,
    ),
    Command(
        "import-labelstudio",
        run_import_labelstudio,
        "store a Label Studio export's annotations as judgments",
        "Read a Label Studio JSON export of the study's tasks and store each complete "
        "annotation as judgments of annotator labelstudio:<user id>.",
        import_labelstudio_arguments,
    ),
]


def human_eval_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="human_eval_command", metavar="SUB", required=True)
    for cmd in SUBCOMMANDS:
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description)
        sp.set_defaults(human_eval_run=cmd.run)
        cmd.arguments(sp)
        # after the subcommand's words too; SUPPRESS keeps a --config given before them
        sp.add_argument(
            "--config",
            metavar="RECIPE",
            default=argparse.SUPPRESS,
            help="YAML recipe (default: the built-in tiny CPU recipe)",
        )


def run_human_eval(args: argparse.Namespace) -> int:
    return args.human_eval_run(args)


COMMANDS = [
    Command(
        "human-eval",
        run_human_eval,
        "blinded pairwise human evaluation of two systems (build, add-annotator, serve, "
        "report, Label Studio export/import)",
        "A blinded A/B study of two systems' replies to the same turns, judged on fluency, "
        "professionalism, empathy, helpfulness and overall (A, tie or B): build it, add "
        "annotators (each with a token), collect judgments (an annotation page, or Label "
        "Studio), and report win/tie/lose with bootstrap intervals and inter-annotator "
        "agreement. See docs/human_eval.md.",
        human_eval_arguments,
    ),
]
