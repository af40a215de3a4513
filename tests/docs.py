"""Reading the project's Markdown as data: fenced blocks, tables, code spans, and the bkp
command lines in them. Shared by tests/unit/test_docs.py and tests/e2e/test_runbooks.py."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# The pages an operator reads: every claim in them is checked against the program.
PAGES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md"),
                *(REPO_ROOT / "runbooks").glob("*.md")])
RUNBOOKS = sorted((REPO_ROOT / "runbooks").glob("*.md"))

RUNNABLE = "runnable"  # the info-string word that marks a block the runbook test runs


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    info: str  # the info string: "sh runnable", "yaml", ""
    text: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def runnable(self) -> bool:
        return self.language in ("sh", "bash") and RUNNABLE in self.info.split()[1:]

    @property
    def where(self) -> str:
        page = (self.page.relative_to(REPO_ROOT) if self.page.is_relative_to(REPO_ROOT)
                else self.page.name)
        return f"{page}:{self.line}"


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page (CommonMark fences, also indented in lists)."""
    found, lines = [], page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, info = opening.groups()
        first, body = index, []
        index += 1
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while index < len(lines) and not closing.match(lines[index]):
            line = lines[index]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            index += 1
        found.append(Block(page, first + 1, info.strip(), "\n".join(body)))
        index += 1
    return found


def prose(page: Path) -> str:
    """The page without its fenced blocks (for code spans and tables)."""
    out, inside = [], None
    for line in page.read_text().splitlines():
        fence = FENCE.match(line)
        if fence and inside is None:
            inside = fence.group(2)[0] * len(fence.group(2))
            continue
        if inside is not None:
            if line.strip().startswith(inside) and set(line.strip()) == {inside[0]}:
                inside = None
            continue
        out.append(line)
    return "\n".join(out)


@dataclass(frozen=True)
class Table:
    page: Path
    header: list[str]
    rows: list[list[str]]


def tables(page: Path) -> list[Table]:
    found, current = [], None
    for line in prose(page).splitlines():
        if line.startswith("|"):
            cells = split_row(line)
            if current is None:
                current = Table(page, [c.lower() for c in cells], [])
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.rows.append(cells)
        elif current is not None:
            found.append(current)
            current = None
    if current is not None:
        found.append(current)
    return found


def split_row(line: str) -> list[str]:
    """Cells of a Markdown table row; `\\|` is a pipe inside a cell."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def code_spans(text: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"(`+)(.+?)\1", text)]


# ---------------------------------------------------------------- bkp command lines

# Words after which a shell word is in command position.
_COMMAND_POSITION = {"&&", "||", "|", ";", "(", "{", "!", "$(", "sudo", "-E", "exec", "then",
                     "do", "time"}
GLOBAL_OPTIONS_WITH_VALUE = {"--policies", "--home", "--operator", "--config", "--log-file"}


def is_bkp(word: str) -> bool:
    return word == "bkp" or word.endswith("/bin/bkp")


def shell_words(line: str) -> list[str]:
    line = line.split(" # ")[0] if not line.lstrip().startswith("#") else ""
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|(){}")
        lexer.whitespace_split = True
        lexer.commenters = ""
        return list(lexer)
    except ValueError:  # an unbalanced quote in a line that continues: plain split
        return line.split()


def bkp_invocations_in_shell(text: str) -> list[list[str]]:
    """The argument lists of every bkp command in a shell block (continuation lines joined)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shell_words(line)
        for index, word in enumerate(words):
            before = words[index - 1] if index else None
            in_position = (before is None or before in _COMMAND_POSITION
                           or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", before or "")
                           or (before or "").endswith("$("))
            if is_bkp(word) and in_position:
                found.append(_until_end_of_command(words[index + 1:]))
    return found


def _until_end_of_command(words: list[str]) -> list[str]:
    args = []
    for word in words:
        if word in ("&&", "||", "|", ";", "(", ")", "$", "}", ">", ">>", "2>&1") or word.startswith(
                (">", "2>")):
            break
        args.append(word)
    return args


def bkp_invocations_in_prose(text: str) -> list[list[str]]:
    """`bkp ...` code spans: what the prose tells an operator to type."""
    found = []
    for span in code_spans(text):
        words = shell_words(span)
        if words and is_bkp(words[0]) and len(words) > 1:
            found.append(_until_end_of_command(words[1:]))
    return found
