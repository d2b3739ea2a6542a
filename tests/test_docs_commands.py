"""Every command the documentation shows is checked against the real CLI; the marked ones run.

Convention (docs/index.md): shell commands live in ```bash blocks. Each ``rsfm`` invocation in
them (plain, or after ``deepspeed ... --module rsfm_ds.cli`` / ``$(which rsfm)``) must parse with
``rsfm``'s own parser, and the run configs it names must load with its overrides applied. Each
``bash <script>`` / ``python <script>`` must name a file of the repository. A block right after a
``<!-- test: run -->`` line runs as written on CPU, from the repository root.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from rsfm_ds.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "datasets").glob("*/README.md"),
               *(ROOT / "datasets").glob("README.md")])
RUN_MARK = "<!-- test: run -->"


def bash_blocks(path: Path) -> List[Tuple[int, str, bool]]:
    """``(first line number, text, marked to run)`` of each ```bash block of ``path``."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("```bash"):
            marked = i > 0 and lines[i - 1].strip() == RUN_MARK
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith("```"):
                end += 1
            blocks.append((i + 2, "\n".join(lines[i + 1:end]), marked))
            i = end
        i += 1
    return blocks


def commands(block: str) -> List[Tuple[int, str]]:
    """Logical command lines (continuations joined, comments dropped) with their line offsets."""
    out, pending, start = [], "", 0
    for offset, raw in enumerate(block.splitlines()):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not pending:
            start = offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            out.append((start, pending.strip()))
        pending = ""
    return out


def rsfm_argv(segment: str):
    """The ``rsfm`` arguments of one shell segment, or None when it does not run rsfm."""
    segment = re.sub(r"^(\w+=\S*\s+)+", "", segment.strip())  # leading VAR=value assignments
    try:
        words = shlex.split(segment.replace("$(which rsfm)", "rsfm"))
    except ValueError:
        return None
    if not words or words[0] not in ("rsfm", "deepspeed", "torchrun", "python"):
        return None
    for i, word in enumerate(words):
        if word in ("rsfm", "rsfm_ds.cli"):
            return words[i + 1:]
    return None


def segments(command: str) -> List[str]:
    return [s for s in re.split(r"\s*(?:&&|\|\||;|\|)\s*", command) if s.strip()]


CASES = [(path, line + offset, command) for path in DOCS for line, block, _ in bash_blocks(path)
         for offset, command in commands(block)]


def test_docs_have_commands_to_check():
    assert len(CASES) > 50 and any(mark for p in DOCS for _, _, mark in bash_blocks(p))


@pytest.mark.parametrize("path, line, command", CASES,
                         ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in CASES])
def test_documented_command_matches_the_cli(path, line, command, capsys):
    where = f"{path.relative_to(ROOT)}:{line}: {command}"
    for segment in segments(command):
        words = segment.split()
        if words[:1] in (["bash"], ["python"]) and len(words) > 1 and words[1] != "-m" \
                and not words[1].startswith(("-", "$", "/")):
            assert (ROOT / words[1]).is_file(), f"{where}: {words[1]} does not exist"
        argv = rsfm_argv(segment)
        if argv is None:
            continue
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: rsfm rejects it:\n{capsys.readouterr().err}")
        _check_config(args, where)


def _check_config(args, where: str) -> None:
    """Run configs named in docs must exist in the repository and take the overrides shown."""
    from rsfm_ds.config import ConfigError, load_config

    config = getattr(args, "config", None)
    if not config or "$" in config or config.startswith("/"):
        return
    assert (ROOT / config).is_file(), f"{where}: {config} does not exist"
    overrides = [o for o in getattr(args, "overrides", []) if "$" not in o]
    if args.command == "pretrain":
        from rsfm_ds.engine.config import PretrainConfig as cls
    elif args.command == "finetune":
        from rsfm_ds.engine.tasks import TASKS

        cls = TASKS[args.finetune_task].config_class
    elif args.command == "study":
        from rsfm_ds.study import StudyConfig as cls
    else:
        return
    cwd = os.getcwd()
    os.chdir(ROOT)  # config paths in docs are relative to the repository root
    try:
        load_config(cls, config, overrides)
    except ConfigError as e:
        pytest.fail(f"{where}: {e}")
    finally:
        os.chdir(cwd)


def synopses(path: Path) -> List[Tuple[int, str]]:
    """``rsfm`` synopsis lines (with their indented continuations) of plain ``` blocks."""
    out, lines, in_plain, in_other = [], path.read_text().splitlines(), False, False
    for n, line in enumerate(lines, 1):
        fence = line.strip()
        if fence.startswith("```"):
            if in_plain or in_other:
                in_plain = in_other = False
            elif fence == "```":
                in_plain = True
            else:
                in_other = True
            continue
        if in_plain and line.startswith("rsfm "):
            out.append((n, line))
        elif in_plain and out and out[-1][0] + out[-1][1].count("\n") + 1 == n and line.startswith(" "):
            out[-1] = (out[-1][0], out[-1][1] + "\n" + line)
    return out


def subparser(words: List[str]):
    """The argparse parser of the verb path at the start of ``words`` and the words it used."""
    parser, used = build_parser(), 0
    for word in words:
        actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not actions or word not in actions[0].choices:
            break
        parser, used = actions[0].choices[word], used + 1
    return parser, used


SYNOPSES = [(path, n, text) for path in DOCS for n, text in synopses(path)]


@pytest.mark.parametrize("path, line, text", SYNOPSES, ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in SYNOPSES])
def test_documented_synopsis_names_real_verbs_and_options(path, line, text):
    words = text.split()[1:]
    parser, used = subparser(words)
    where = f"{path.relative_to(ROOT)}:{line}: {text.strip()}"
    assert used > 0, f"{where}: no such verb"
    known = {o for a in parser._actions for o in a.option_strings}
    flags = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text))
    assert flags <= known, f"{where}: unknown options {sorted(flags - known)} (known: {sorted(known)})"


RUNNABLE = [(path, line, block) for path in DOCS for line, block, marked in bash_blocks(path) if marked]


@pytest.mark.slow
@pytest.mark.parametrize("path, line, block", RUNNABLE,
                         ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in RUNNABLE])
def test_marked_doc_blocks_run_as_written(path, line, block, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (f"{path.relative_to(ROOT)}:{line} failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


@pytest.mark.parametrize("bad", ["rsfm convert zero-to-fp32 a b --no-such-flag",
                                 "deepspeed --num_gpus 2 $(which rsfm) finetune cls --config x.yaml",
                                 "OMP_NUM_THREADS=1 python -m rsfm_ds.cli study"])
def test_the_check_sees_rsfm_behind_launchers_and_rejects_bad_usage(bad, capsys):
    argv = rsfm_argv(bad)
    assert argv is not None
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
