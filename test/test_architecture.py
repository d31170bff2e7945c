"""The layering the code promises (STYLE.md, README "Architecture"), read from its AST.

The learning stages stack in the method's order and every package imports only those below it;
no module reaches into another's ``_private`` names; ``ate_core`` never imports ROS. The
README's picture of the layers is the output of ``scripts/import_layers.py``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load_layers():
    spec = importlib.util.spec_from_file_location("import_layers", REPO / "scripts" / "import_layers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


layers = _load_layers()


def test_no_module_imports_another_modules_private_name():
    assert layers.private_imports() == []


def test_ate_core_packages_form_no_import_cycle():
    assert layers.cycles(layers.core_graph()) == []


def test_ate_core_never_imports_ros():
    graph = layers.core_graph()
    assert not [pkg for pkg, deps in graph.items() if "ate_ros" in deps]
    ros = []
    for path in layers.source_files():
        if path.parts[len(REPO.parts)] != "ate_core":
            continue
        text = path.read_text(encoding="utf-8")
        for banned in ("import rclpy", "from rclpy", "import launch", "from launch"):
            if banned in text:
                ros.append(f"{path.relative_to(REPO)}: {banned}")
    assert ros == []


def test_the_learning_stages_stack_in_the_methods_order():
    depth = layers.layers(layers.core_graph())
    order = ["config", "robot", "data", "policy", "train", "align", "steer", "runtime"]
    assert [depth[p] for p in order] == sorted(depth[p] for p in order)
    assert len({depth[p] for p in ["policy", "train", "align", "steer"]}) == 4, depth


def test_runtime_imports_no_training_code():
    offenders = [f"{i.module}:{i.line} imports {i.target}" for i in layers.imports()
                 if i.module.startswith("ate_core.runtime") and i.target.startswith("ate_core.train")]
    assert offenders == []


def test_the_readme_picture_is_the_scripts_output():
    block, found = layers.readme_block()
    assert found, "README.md lacks the import-layers markers"
    assert block == layers.picture(), "README's import layers are stale: run scripts/import_layers.py --write-readme"


def test_the_checker_finds_a_private_import_and_a_cycle(tmp_path):
    """The rules can fail: a tree with both faults is reported."""
    for pkg in ("ate_core/a", "ate_core/b", "ate_ros"):
        (tmp_path / pkg).mkdir(parents=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "ate_core/__init__.py").write_text("")
    (tmp_path / "ate_core/a/x.py").write_text(textwrap.dedent("""
        from ate_core.b.y import _helper

        def f():
            import ate_core.b.y as y
            return y._other
    """))
    (tmp_path / "ate_core/b/y.py").write_text("from ate_core.a import x\n_helper = _other = 1\n")
    assert layers.cycles(layers.core_graph(tmp_path)) == [["a", "b"]]
    found = layers.private_imports(tmp_path)
    assert any("ate_core.b.y._helper" in f for f in found) and any("ate_core.b.y._other" in f for f in found)


def test_the_check_passes_from_a_shell():
    out = subprocess.run([sys.executable, str(REPO / "scripts/import_layers.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ate_core" in out.stdout
