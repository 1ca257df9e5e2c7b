"""Command lines made from configuration dataclasses: each option is a dataclass field, declared once.

A method's configuration is a dataclass that extends :class:`CommonConfig` (the options every command
shares: data, mapping, backbone, weights, image size, batch size, seed, output directory, verbosity).
:func:`build_parser` turns the fields into options (``--img-size`` for ``img_size``; the type from the
annotation; the help from ``field(metadata={"help": ...})``), and :func:`parse` turns the command line
back into the dataclass. Options left out keep the dataclass's defaults, or, with ``--resume --out
DIR``, the values recorded in DIR (a run continues with its own options; options written again win).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from icao_mtl import io as aio
from icao_mtl.errors import ConfigError, ResumeError


def option(default, help: str, **cli):
    """A dataclass field with its command-line help (and, optionally, ``flag``, ``action``, ``const``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class CommonConfig:
    """The options every method's command shares."""

    data: str | None = option(None, "dataset directory, or synthetic (default) / digits / lfw")
    mapping: str | None = option(None, "column mapping JSON for another tool's labels.csv (see data/README.md)")
    synth_n: int = option(6000, "images of the synthetic set (default 6000)")
    synth_size: int = option(224, "side of the synthetic images in pixels (default 224)")
    backbone: str = option("small_cnn", "small_cnn (default), mobilenet_v2, vgg16, ...")
    weights: str = option("none", "none (default), imagenet or a weights file")
    img_size: int | None = option(None, "input side in pixels (default: the backbone's, 128 for small_cnn)")
    batch_size: int = option(32, "images per batch (default 32)")
    seed: int = option(0, "seed of initialisation, shuffling, augmentation and the search (default 0)")
    out: str | None = option(None, "output directory (default: a new one under runs/ or searches/)")
    verbose: int = option(1, "one line per epoch and trial, no progress bars", flag="--quiet", action="store_const",
                          const=0)

    #: fields that may differ when a run is resumed (the rest must match the recorded run)
    VOLATILE = ("out", "verbose")

    def identity(self) -> dict:
        """The fields that define what is computed (a resume must give the same)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.VOLATILE}

    def train_config(self, **changes):
        """The :class:`~icao_mtl.config.TrainConfig` of the data, backbone and seed options (for the
        dataset, the split and the pipelines every method shares with ``python -m icao_mtl.train``)."""
        from icao_mtl.config import TrainConfig

        # approach hc2: the methods' pipelines at the backbone's own size (regions would read 224 px)
        base = TrainConfig(approach="hc2", data=self.data, mapping=self.mapping, synth_n=self.synth_n,
                           synth_size=self.synth_size,
                           backbone=self.backbone, weights=self.weights, img_size=self.img_size,
                           batch_size=self.batch_size, seed=self.seed, check_images="exists",
                           mixed_precision="none")  # every method computes in float32, as the searches do
        return base.copy(**changes)


def _base_type(annotation):
    """(type, is_list) of a field annotation such as ``int | None`` or ``list[float]``."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return (args[0] if args else str), True
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if annotation is list:
        return str, True
    return annotation, False


def build_parser(cls, *, prog: str, doc: str, skip=()) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one option per field of the dataclass ``cls`` (plus ``--resume``).
    Every option defaults to "not given", so :func:`parse` can tell given options from defaults."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc.split("\n\n", 1)[1] if "\n\n" in doc else None,
                                     argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        help_ = meta.pop("help", None)
        default = getattr(defaults, f.name)
        kwargs = {"dest": f.name, "help": help_}
        if "action" in meta:
            kwargs.update(action=meta.pop("action"), const=meta.pop("const", None))
        else:
            typ, many = _base_type(hints[f.name])
            if typ is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = typ
                if many:
                    kwargs["nargs"] = "+"
            if help_ and default not in (None, [], "") and "default" not in help_:
                kwargs["help"] = f"{help_} (default {default})"
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue the run in --out after an interruption (with its recorded options)")
    return parser


def parse(cls, parser: argparse.ArgumentParser, argv, *, record: str | None = None, ignore=()):
    """``(config, resume)`` from the command line. With ``--resume --out DIR`` and ``DIR/<record>`` (a
    JSON of the recorded options), the options not written again take the recorded values. ``ignore``:
    options of the parser that are not fields."""
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if k not in ignore}
    resume = args.pop("resume", False)
    values = dataclasses.asdict(cls())
    if resume and record and args.get("out") and (Path(args["out"]) / record).is_file():
        recorded = aio.read_json(Path(args["out"]) / record)
        recorded = {**recorded, **recorded.get("requested", {})}  # what the run was last asked for
        values.update({k: v for k, v in recorded.items() if k in values})
    values.update(args)
    return cls(**values), resume


def check_resume(out: Path, record: Path, identity: dict, resume: bool, *, what: str,
                 continue_without_resume: bool = False, on_resume: str = "") -> dict | None:
    """Refuse, before any work starts, a run that would overwrite or silently mix with another.

    ``record`` is the JSON file in ``out`` holding the options of the run there (its ``identity``).
    Without ``resume`` a recorded run is an error (unless ``continue_without_resume``: a distributed
    search's chief restarts into its own directory); with it, every recorded option must equal
    ``identity``, and a missing record is an error. ``what`` names the run in the messages ("a DAG
    run"), ``on_resume`` says what ``--resume`` adds. Returns the recorded options, or None."""
    if not record.is_file():
        if resume:
            raise ResumeError(f"Nothing to resume in {out} (no {record.name}). Fix: pass the --out of an earlier run, "
                              "or drop --resume.")
        return None
    old = aio.read_json(record)
    if not resume and not continue_without_resume:
        raise ConfigError(f"{out} already holds {what}. Fix: pass --resume to continue it{on_resume}, or choose "
                          "another --out.")
    diff = sorted(k for k, v in identity.items() if old.get(k) != v)
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} there, {identity[k]!r} now" for k in diff[:5])
        raise ResumeError(f"{out} holds {what} with other options ({shown}). Fix: resume with the same options, or "
                          "choose another --out.")
    return old


def method_main(cls, run, *, prog: str, doc: str, record: str):
    """``(build_parser, main)`` of a method's command: the options of the dataclass ``cls``, ``--resume``
    with the options recorded in ``OUT/<record>``, then ``run(config, resume=...)``; ``main(argv)``
    returns 0, or 2 with the error's message for a package error."""
    from icao_mtl.errors import command

    def make_parser():
        return build_parser(cls, prog=prog, doc=doc)

    @command
    def main(argv: list[str] | None = None) -> int:
        cfg, resume = parse(cls, make_parser(), argv, record=record)
        run(cfg, resume=resume)
        return 0

    return make_parser, main
