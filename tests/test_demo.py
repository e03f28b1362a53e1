"""``orchestrator demo`` and ``scripts/demo``: the personas answering on the loopback sandboxes, what
the user can type (prefix, mention, reply, DM), and how it ends (Ctrl-D, Ctrl-C)."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from orchestrator.demo import ANSWER_TIMEOUT, run_demo
from orchestrator.demo.syntax import Kind, Line, parse_line
from orchestrator.sandbox.openai_server import said

from . import images
from .conftest import API_KEY, World
from .processes import base_env
from .test_cli import orchestrator

ROOT = Path(__file__).resolve().parent.parent
BOTS_YAML = str(ROOT / "bots.yaml")
SAGE_SAYS = "sage: (sandbox model, not a real LLM) Sage here — "
NO_ANSWER = (
    "(no persona answered — they heard it, as context for what they say next; "
    "address one with its prefix ('!chat hello')"
)


async def run(capsys: pytest.CaptureFixture[str], *messages: str, config: str = BOTS_YAML) -> list[str]:
    """Run the demo in-process with these ``-m`` messages; its printed lines. An exchange that
    waited for an answer that never comes would take ANSWER_TIMEOUT (120 s): the bound fails it."""
    with anyio.fail_after(ANSWER_TIMEOUT / 4):
        assert await run_demo(config, list(messages), None) == 0
    return capsys.readouterr().out.splitlines()


# ------------------------------------------------------------------ what the user types


@pytest.mark.parametrize(
    ("typed", "line"),
    [
        ("!chat hello", Line(Kind.CHANNEL, "!chat hello")),
        ("  hello there ", Line(Kind.CHANNEL, "hello there")),
        ("@everyone look", Line(Kind.CHANNEL, "@everyone look")),
        ("@Sage hello", Line(Kind.MENTION, "hello", "sage")),
        ("@sage, hello", Line(Kind.MENTION, "hello", "sage")),
        ("> and then?", Line(Kind.REPLY, "and then?")),
        (">and then?", Line(Kind.REPLY, "and then?")),
        ("/dm hafez سلام دوست", Line(Kind.DM, "سلام دوست", "hafez")),
        ("/chat hello there", Line(Kind.SLASH, "hello there", None, command="chat")),
        ("/Chat@Hafez سلام", Line(Kind.SLASH, "سلام", "hafez", command="chat")),
        ("/usage", Line(Kind.SLASH, "", None, command="usage")),
    ],
)
def test_parse_line(typed: str, line: Line) -> None:
    assert parse_line(typed, ["sage", "hafez"]) == line


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("typed", "error"),
    [
        ("@bob hi", "no bot named '@bob' here; the bots are sage, hafez"),
        ("/dm bob hi", "no bot named 'bob' here"),
        ("/dm sage", "a DM needs a bot and a text: /dm <bot> <text>"),
        ("/dm", "a DM needs a bot and a text"),
        ("/chat@bob hi", "no bot named 'bob' here"),
        (">  ", "a reply needs a text: > <text>"),
    ],
)
def test_parse_line_says_what_is_wrong(typed: str, error: str) -> None:
    with pytest.raises(ValueError, match="^" + error.replace("(", r"\(")):
        parse_line(typed, ["sage", "hafez"])


# ------------------------------------------------------------------ exchanges, in-process


async def test_unanswered_lines_are_reported_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    """No persona takes these: the demo knows once each bot's client has read the message (a gateway
    round trip), instead of waiting ANSWER_TIMEOUT for an answer that never comes."""
    out = await run(capsys, "hello there", "!nosuchcommand", "!chat hello")
    assert (
        out.count("  " + NO_ANSWER + ", a mention ('@sage hello'), a reply ('> text') or a DM ('/dm sage hello'))") == 2
    )
    assert out[-1].startswith(SAGE_SAYS + 'you said "hello".')


async def test_slash_commands_are_answered_and_private_answers_are_marked(capsys: pytest.CaptureFixture[str]) -> None:
    out = await run(capsys, "/chat hello", "!chat and now?", "/usage", "/nosuch thing")
    assert out[out.index("you: /chat hello") + 1].startswith(SAGE_SAYS + 'you said "hello".')
    prefixed = out[out.index("you: !chat and now?") + 1]
    assert prefixed.startswith(SAGE_SAYS + 'you said "and now?".') and '1 earlier turn, the last: "' in prefixed
    assert out[out.index("you: /usage") + 1] == "sage: Usage of sage (yours / the whole persona):"
    usage = [line for line in out[out.index("you: /usage") + 1 : out.index("you: /nosuch thing")] if line]
    assert usage[-1].endswith(" (only you see this)") and not any(line.startswith("you:") for line in usage)
    commands = "/chat, /reset, /usage, /panel, /imagine"  # sage has an image_model
    assert out[-1] == f"sage: sage has no command /nosuch; its commands are {commands}. (only you see this)"


async def test_a_mention_and_a_reply_reach_the_bot(capsys: pytest.CaptureFixture[str]) -> None:
    """Neither line has a prefix: sage answers only because one mentions it and the other replies to it."""
    out = await run(capsys, "@sage what is virtue?", "> and vice?", "?chat سلام", ">خوبی؟")
    answers = [line for line in out if ": (sandbox model" in line]
    assert (
        answers[0]
        == SAGE_SAYS
        + 'you said "what is virtue?". '
        + "[persona: Sage, a calm philosophy tutor · gpt-4o-mini · T=0.3 · no earlier turns]"
    )
    assert answers[1].startswith(SAGE_SAYS + 'you said "and vice?".') and answers[1].endswith(
        '· 1 earlier turn, the last: "what is virtue?"]'
    )
    assert answers[3].startswith('hafez: (sandbox model, not a real LLM) You said "خوبی؟".'), (
        "a reply goes to the last answer's bot"
    )
    assert out.count("you: > and vice?") == 1


async def test_a_dm_is_answered_when_the_bot_takes_dms(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "dms.yaml"
    config.write_text(
        (ROOT / "bots.yaml")
        .read_text(encoding="utf-8")
        .replace("    params: {temperature: 0.3}\n", "    params: {temperature: 0.3}\n    access: {dms: true}\n"),
        encoding="utf-8",
    )
    out = await run(
        capsys, "/dm sage a secret", "/dm sage !chat a secret", "> another", "/dm hafez ?chat سلام", config=str(config)
    )
    secrets = [
        line
        for line in out
        if line.startswith('sage (DM): (sandbox model, not a real LLM) Sage here — you said "a secret".')
    ]
    assert len(secrets) == 2, "a DM needs no prefix"
    assert any(
        line.startswith('sage (DM): (sandbox model, not a real LLM) Sage here — you said "another".') for line in out
    )
    assert f"  (hafez does not answer DMs: its access.dms is false in {config})" in out


async def test_a_dm_to_a_bot_without_dms_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    out = await run(capsys, "/dm sage !chat hello")
    assert out[-1] == f"  (sage does not answer DMs: its access.dms is false in {BOTS_YAML})"


async def test_the_sample_script_shows_the_room_heard_and_a_panel(capsys: pytest.CaptureFixture[str]) -> None:
    """With nothing typed, the built-in script: a line addressed to nobody reaches the persona asked
    about it next (the stand-in model quotes the last earlier turn), and a panel of both personas."""
    with open(os.devnull, "rb") as empty, anyio.fail_after(ANSWER_TIMEOUT / 4):  # noqa: ASYNC230 - /dev/null
        assert await run_demo(BOTS_YAML, None, None, input_fd=empty.fileno()) == 0
    out = capsys.readouterr().out.splitlines()
    owl = out.index("you: I think the owl is the wisest of birds.")
    assert out[owl + 1].startswith("  (no persona answered — they heard it, as context for what they say next; ")
    assert out[owl + 3] == "you: !chat what did I just say?"
    assert out[owl + 4].startswith(SAGE_SAYS + 'you said "what did I just say?".')
    assert out[owl + 4].endswith(' earlier turns, the last: "I think the owl is the wisest of birds."]')
    panel = out[out.index("you: !panel is wisdom learned or given?") + 1 :]
    assert panel[0] == 'sage: Panel on "is wisdom learned or given?": sage, hafez, 1 round. `!stop` ends it.'
    topic = 'you said "Panel discussion. Topic: is wisdom learned or given? Round 1 of 1. The other panelists: '
    assert panel[1].startswith(SAGE_SAYS + topic + "hafez.")
    assert panel[2].startswith("hafez: (sandbox model, not a real LLM) Y" + topic[1:] + "sage.")
    assert len(panel) == 3


async def test_an_exchange_lasts_until_its_panel_has_ended(capsys: pytest.CaptureFixture[str]) -> None:
    """A panel answers turn after turn from its own task, after the line's jobs are done: every round
    is shown under the line that started it."""
    out = await run(capsys, "!panel 2 is wisdom learned?", "!chat after the panel")
    answers = [line for line in out if "Topic: is wisdom learned? Round" in line]
    rounds = [(line.split(":", 1)[0], line.split(" Round ", 1)[1][:6]) for line in answers]
    assert rounds == [("sage", "1 of 2"), ("hafez", "1 of 2"), ("sage", "2 of 2"), ("hafez", "2 of 2")]
    assert out.index(answers[-1]) < out.index("you: !chat after the panel")


async def test_without_channel_context_an_unaddressed_line_is_not_heard(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "deaf.yaml"
    text = (ROOT / "bots.yaml").read_text(encoding="utf-8")
    deaf = text.replace('  prefix: "!"\n', '  prefix: "!"\n  context: {channel_messages: 0}\n')
    config.write_text(deaf, encoding="utf-8")
    out = await run(capsys, "hello there", "!chat what did I just say?", config=str(config))
    assert "  (no persona answered; address one with its prefix ('!chat hello'), a mention" in out[-4]
    assert out[-1].endswith("· no earlier turns]")


@pytest.mark.bad_input
async def test_bad_lines_are_explained_and_the_demo_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    out = await run(capsys, "> too early", "@bob hi", "/dm sage", "!chat still here")
    assert "  (nothing to reply to yet: talk to a persona first, e.g. '!chat hello')" in out
    assert "  (no bot named '@bob' here; the bots are sage, hafez)" in out
    assert "  (a DM needs a bot and a text: /dm <bot> <text>)" in out
    assert out[-1].startswith(SAGE_SAYS + 'you said "still here".')


@pytest.mark.bad_input
async def test_a_missing_or_broken_file_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert await run_demo(str(tmp_path / "nope.yaml"), ["hi"], None) == 2
    assert capsys.readouterr().err == f"cannot read {tmp_path / 'nope.yaml'}: No such file or directory\n"
    (tmp_path / "bad.yaml").write_text("bots: [\n", encoding="utf-8")
    assert await run_demo(str(tmp_path / "bad.yaml"), ["hi"], None) == 2
    assert f"{tmp_path / 'bad.yaml'}:2: not valid YAML" in capsys.readouterr().err


async def test_an_attached_file_goes_with_the_first_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    picture = tmp_path / "cat.png"
    picture.write_bytes(images.png(64, 48))
    with anyio.fail_after(ANSWER_TIMEOUT / 4):
        assert await run_demo(BOTS_YAML, ["!chat what is this?", "!chat and now?"], None, attach=[str(picture)]) == 0
    out = capsys.readouterr().out.splitlines()
    [attached] = [line for line in out if line.startswith("  (you attached")]
    served_at = r"http://127\.0\.0\.1:\d+/attachments/\d+/\d+/cat\.png"
    assert re.fullmatch(rf"  \(you attached cat\.png, \d+ bytes: {served_at}\)", attached)
    answers = [line for line in out if line.startswith(SAGE_SAYS)]
    assert 'you said "what is this? [image: cat.png]". I saw image cat.png 64x48 png.' in answers[0]
    assert "I saw" not in answers[1], "only the first message carries the file"


@pytest.mark.bad_input
async def test_a_file_to_attach_that_cannot_be_read_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert await run_demo(BOTS_YAML, ["!chat hi"], None, attach=[str(tmp_path / "gone.png")]) == 2
    assert capsys.readouterr().err == f"cannot attach {tmp_path / 'gone.png'}: No such file or directory\n"


# ------------------------------------------------------------------ the real process


def test_demo_attaches_a_file_given_with_attach(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("remember the milk", encoding="utf-8")
    result = orchestrator("demo", "bots.yaml", "--attach", str(tmp_path / "notes.txt"), "-m", "!chat read this",
                          env=base_env())  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "  (you attached notes.txt, 17 bytes: http://127.0.0.1:" in result.stdout
    assert 'you said "read this [file notes.txt] remember the milk [end of notes.txt]".' in result.stdout


def test_demo_runs_without_accounts_and_personas_answer() -> None:
    result = orchestrator("demo", "bots.yaml", "-m", "!chat hello", "-m", "?chat سلام", env=base_env())
    assert result.returncode == 0, result.stderr
    assert "answers come from the sandbox model (not a real LLM)" in result.stdout
    assert "Memory starts empty on each run" in result.stdout
    assert (
        "@<bot> <text> mentions a bot, '> <text>' replies to the last answer, /dm <bot> <text> sends a DM"
        in result.stdout
    )
    assert SAGE_SAYS + 'you said "hello".' in result.stdout
    assert 'hafez: (sandbox model, not a real LLM) You said "سلام". [persona: تو «حافظ» هستی' in result.stdout
    assert result.stdout.count("!chat hello") == 1, "each line is shown once"


def test_demo_reads_messages_from_stdin() -> None:
    result = orchestrator("demo", "bots.yaml", env=base_env(), input="!chat one\n!chat two\n")
    assert result.returncode == 0, result.stderr
    assert (
        'you said "one". [persona: Sage, a calm philosophy tutor · gpt-4o-mini · T=0.3 · no earlier turns]'
        in result.stdout
    )
    assert (
        'you said "two". [persona: Sage, a calm philosophy tutor · gpt-4o-mini · T=0.3 · '
        '1 earlier turn, the last: "one"]' in result.stdout
    )


def test_scripts_demo_takes_another_file_as_first_argument(tmp_path: Path) -> None:
    text = (ROOT / "bots.yaml").read_text(encoding="utf-8").replace("You are Sage, a calm", "You are Sol, a sunny")
    (tmp_path / "my.yaml").write_text(text, encoding="utf-8")
    script = str(ROOT / "scripts" / "demo")

    def scripts_demo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", script, *args], cwd=tmp_path, env=base_env(), capture_output=True, text=True, timeout=120
        )

    mine = scripts_demo("my.yaml", "-m", "!chat hi")  # relative to where it is run, not to the repository
    assert mine.returncode == 0, mine.stderr
    assert 'sage: (sandbox model, not a real LLM) Sol here — you said "hi".' in mine.stdout
    default = scripts_demo("-m", "!chat hi")
    assert default.returncode == 0, default.stderr
    assert SAGE_SAYS + 'you said "hi".' in default.stdout
    missing = scripts_demo("missing.yaml", "-m", "!chat hi")
    assert (missing.returncode, missing.stderr) == (
        2,
        f"cannot read {tmp_path / 'missing.yaml'}: No such file or directory\n",
    )


class Terminal:
    """``orchestrator demo`` with a pseudo-terminal as stdin, stdout and stderr."""

    def __init__(self) -> None:
        self.controller, terminal = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--log-level", "WARNING", "demo", "bots.yaml"],
            cwd=ROOT,
            env=base_env(),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            close_fds=True,
        )
        os.close(terminal)
        self.seen = b""

    def read_until(self, marker: bytes, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while marker not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {marker!r} in {self.seen.decode(errors='replace')!r}"
            ready, _, _ = select.select([self.controller], [], [], remaining)
            if ready:
                self.seen += os.read(self.controller, 4096)

    def wait(self) -> int:
        """The exit status, within 30 s; then what the process wrote last is in :attr:`seen`."""
        status = self.process.wait(timeout=30)
        while select.select([self.controller], [], [], 0)[0]:
            try:
                chunk = os.read(self.controller, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            self.seen += chunk
        return status

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self.controller)


def test_demo_is_interactive_in_a_terminal() -> None:
    term = Terminal()
    try:
        term.read_until(b"you> ")
        os.write(term.controller, "?chat سلام\n".encode())
        term.read_until(b"hafez: (sandbox model")
        os.write(term.controller, b"\x04")  # Ctrl-D ends the session
        assert term.wait() == 0
    finally:
        term.close()
    text = term.seen.decode()
    assert 'You said "سلام".' in text
    assert "Type a message; Ctrl-D or Ctrl-C to quit." in text
    assert text.count("?chat سلام") == 1, "the terminal's echo is the only copy of the typed line"


def test_one_ctrl_c_ends_the_demo_in_a_terminal_at_once_and_quietly() -> None:
    """It used to wait in a thread blocked on stdin until Enter, then print a traceback per Ctrl-C."""
    term = Terminal()
    try:
        term.read_until(b"you> ")
        term.process.send_signal(signal.SIGINT)
        assert term.wait() == 130
    finally:
        term.close()
    assert "Traceback" not in term.seen.decode() and term.seen.endswith(b"you> \r\n")


def test_ctrl_c_ends_the_demo_reading_a_pipe_that_stays_open() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--log-level", "WARNING", "demo", "bots.yaml"],
        cwd=ROOT,
        env=base_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        banner, deadline = b"", time.monotonic() + 60
        while b"?chat <text>" not in banner:  # the banner: the bots are up, the demo waits for stdin
            assert select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))[0], banner
            banner += os.read(process.stdout.fileno(), 4096)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)  # a second Ctrl-C changes nothing
        assert process.wait(timeout=30) == 130
        stderr = process.stderr.read().decode()
    finally:
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert stderr == ""


async def test_demo_can_use_a_real_provider_while_discord_stays_local(world: World) -> None:
    env = base_env() | {"DEMO_API_KEY": API_KEY}
    result = await anyio.to_thread.run_sync(
        lambda: orchestrator(
            "demo", "bots.yaml", "--provider-url", world.openai.base_url, "-m", "!chat via provider", env=env
        )
    )
    assert result.returncode == 0, result.stderr
    assert f"answers come from the model server at {world.openai.base_url}" in result.stdout
    [request] = world.openai.chat_requests
    assert request.api_key == API_KEY and said(request.body["messages"][-1]) == "via provider"


async def test_an_imagined_picture_is_saved_and_the_demo_says_where(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with anyio.fail_after(ANSWER_TIMEOUT / 4):
        assert await run_demo(BOTS_YAML, ["!imagine a red fox", "/imagine a blue fox"], None, files_dir=tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    assert any("!imagine <description> (image model gpt-image-1)" in line for line in out), "the banner names it"
    for colour in ("red", "blue"):  # the reply to !imagine, and /imagine's response
        prefix = f"sage: > a {colour} fox [a-{colour}-fox.png saved to "
        [shown] = [line for line in out if line.startswith(prefix)]
        saved = Path(shown.removeprefix(prefix).removesuffix("]"))
        assert saved.parent == tmp_path and (await anyio.Path(saved).read_bytes()).startswith(b"\x89PNG\r\n\x1a\n")
