"""The package's layering (DESIGN.md section 2), checked on the source: recipes are wiring and never import
another recipe; the data layer never imports models, training or recipes. Parsed with ast, nothing imported."""

import ast
from pathlib import Path

import alignlab

PKG = Path(alignlab.__file__).parent

def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names (top level and inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # from alignlab.recipes import dpo
    return out


def recipe_modules() -> set[str]:
    return {f"alignlab.recipes.{p.stem}" for p in (PKG / "recipes").glob("*.py") if p.stem != "__init__"}


def recipe_imports(path: Path) -> set[str]:
    return imported_modules(path) & recipe_modules()


def test_no_recipe_imports_another_recipe():
    """A recipe (recipes/X.py) imports no other recipe module. A command module (recipes/*commands.py)
    registers CLI commands and may import the recipes it runs (their config and run), never another
    command module."""
    bad = []
    for path in sorted((PKG / "recipes").glob("*.py")):
        if path.stem == "__init__":
            continue
        found = recipe_imports(path) - {f"alignlab.recipes.{path.stem}"}
        if path.stem.endswith("commands"):
            found = {m for m in found if m.endswith("commands")}
        bad += [f"{path.name} imports {m}" for m in sorted(found)]
    assert not bad, "recipes must not import each other (move the shared part to its layer):\n" + "\n".join(bad)


def test_the_recipe_check_catches_an_import(tmp_path):
    """The check is not vacuous: a recipe file importing another recipe, at top level or in a function, is seen."""
    f = tmp_path / "x.py"
    f.write_text("def run():\n    from alignlab.recipes.sft import SFTConfig\nfrom alignlab.recipes import dpo\n")
    assert recipe_imports(f) == {"alignlab.recipes.sft", "alignlab.recipes.dpo"}


# data/chat.py takes DEFAULT_CHAT_TEMPLATE from models/tokenizer.py (to move into data/ with that file's owner);
# data/commands.py is the `alignlab data` CLI, which loads a tokenizer to count tokens.
DATA_ALLOWED = {"chat.py": {"alignlab.models.tokenizer", "alignlab.models.tokenizer.DEFAULT_CHAT_TEMPLATE"},
                "commands.py": {"alignlab.models.load", "alignlab.models.load.load_tokenizer"}}


def test_data_layer_imports_no_higher_layer():
    """data/ (rows, tokens, batches, span plans) imports nothing from models, train, rollout, eval or recipes."""
    higher = ("alignlab.models", "alignlab.train", "alignlab.rollout", "alignlab.eval", "alignlab.recipes")
    bad = []
    for path in sorted((PKG / "data").glob("*.py")):
        found = {m for m in imported_modules(path) if m.startswith(higher)} - DATA_ALLOWED.get(path.name, set())
        bad += [f"data/{path.name} imports {m}" for m in sorted(found)]
    assert not bad, "\n".join(bad)


def test_recipes_stay_wiring():
    """recipes/ is wiring: at most ~150 lines a recipe file (the total grows only with the number of commands:
    1,102 lines for the commands of issue 12, whose bound was ~1,200)."""
    sizes = {p.name: p.read_text(encoding="utf-8").count("\n") for p in (PKG / "recipes").glob("*.py")}
    assert all(n <= 160 for n in sizes.values()), sizes
