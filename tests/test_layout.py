"""The package's shape: one package per method under nas/, none importing another, icao_mtl importing
no nas, every method with the same way in and out."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METHODS = sorted(p.name for p in (ROOT / "nas").iterdir()
                 if p.is_dir() and (p / "__init__.py").is_file() and p.name != "common")


def _imports(path: Path, package: str) -> set[str]:
    """The absolute names of the modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    parts = package.split(".")
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


def _modules(top: Path):
    for path in sorted(top.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        package = ".".join(rel.parts[:-1]) if rel.name != "__init__" else ".".join(rel.parts[:-1])
        yield path, package


def test_there_is_one_package_per_method():
    assert {"depth", "bmtas"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_a_method_imports_no_other_method(method):
    others = {f"nas.{m}" for m in METHODS if m != method}
    for path, package in _modules(ROOT / "nas" / method):
        bad = sorted(n for n in _imports(path, package) if any(n == o or n.startswith(o + ".") for o in others))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_common_and_icao_mtl_import_no_method():
    for top, forbidden in ((ROOT / "nas" / "common", tuple(f"nas.{m}" for m in METHODS)), (ROOT / "icao_mtl", ("nas",))):
        for path, package in _modules(top):
            bad = sorted(n for n in _imports(path, package) if any(n == f or n.startswith(f + ".") for f in forbidden))
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_the_same_way_in_and_out(method):
    """``run(config) -> MethodResult``, a config extending the shared options, and a command."""
    import dataclasses
    import inspect

    from nas.common.cli import CommonConfig
    from nas.common.method import MethodResult

    pkg = importlib.import_module(f"nas.{method}")
    assert callable(pkg.run) and callable(pkg.main)
    config_cls = next(v for v in vars(pkg).values() if inspect.isclass(v) and issubclass(v, CommonConfig)
                      and v is not CommonConfig)
    assert dataclasses.is_dataclass(config_cls)
    hints = inspect.signature(pkg.run).return_annotation
    result_cls = next(v for v in vars(pkg).values() if inspect.isclass(v) and issubclass(v, MethodResult))
    assert result_cls.__name__ in str(hints)
    assert (ROOT / "nas" / method / "__main__.py").is_file()
    with pytest.raises(SystemExit) as done:  # --help lists the shared options, made from the dataclass
        pkg.main(["--help"])
    assert done.value.code == 0


def test_the_shared_options_come_from_the_dataclass_fields(capsys, tmp_path):
    from nas.common import cli
    from nas.depth import SearchConfig

    parser = cli.build_parser(SearchConfig, prog="x", doc="x\n\ny")
    cfg, resume = cli.parse(SearchConfig, parser, ["--img-size", "64", "--quiet", "--trials", "3"])
    assert (cfg.img_size, cfg.verbose, cfg.trials, cfg.batch_size, resume) == (64, 0, 3, 32, False)
    import json

    (tmp_path / "search.json").write_text(json.dumps({"trials": 9, "controller": "random", "img_size": 96}))
    cfg, resume = cli.parse(SearchConfig, parser, ["--resume", "--out", str(tmp_path), "--trials", "4"],
                            record="search.json")
    assert resume and (cfg.trials, cfg.controller, cfg.img_size) == (4, "random", 96)  # given > recorded > default
