"""Tests for sbft_ryu.agent.iptables: the rules as data, and Rules with a fake ``run``."""

import subprocess
from types import SimpleNamespace

import pytest

from sbft_ryu.agent import iptables
from sbft_ryu.agent.iptables import RuleSpec

SPEC = RuleSpec(service_port=5555, queue_num=1)
IPTABLES = ["iptables", "-w", "5", "-t", "mangle"]
JUMP = ["POSTROUTING", "-p", "tcp", "--sport", "5555", "!", "-o", "lo",
        "-m", "comment", "--comment", "sbft-agent", "-j", "sbft-out"]

BACKUP_RESTORE = ("*mangle\n"
                  ":sbft-out - [0:0]\n"
                  "-A sbft-out -j NFQUEUE --queue-num 1\n"
                  "COMMIT\n")
PRIMARY_RESTORE_EPOCH_1 = ("*mangle\n"
                           ":sbft-out - [0:0]\n"
                           "-A sbft-out -m mark --mark 0x5bf00001 -j CONNMARK --save-mark\n"
                           "-A sbft-out -m mark --mark 0x5bf00001 -j ACCEPT\n"
                           "-A sbft-out -m connmark --mark 0x5bf00001 -j ACCEPT\n"
                           "-A sbft-out -j NFQUEUE --queue-num 1\n"
                           "COMMIT\n")
LIST_LINE = ("      15     1175 ACCEPT     0    --  *      *       0.0.0.0/0            "
             "0.0.0.0/0            connmark match  0x5bf00001\n")


# --- the rules as data -------------------------------------------------------------------

def test_jump_rule():
    assert iptables.jump_rule(SPEC) == JUMP
    assert iptables.jump_rule(RuleSpec(8080, 3))[4] == "8080"


def test_out_chain_backup():
    assert iptables.out_chain(SPEC) == [["-j", "NFQUEUE", "--queue-num", "1"]]
    assert iptables.out_chain(RuleSpec(5555, 7), None) == [["-j", "NFQUEUE", "--queue-num", "7"]]


def test_out_chain_primary():
    mark = iptables.fast_mark(1)
    assert iptables.out_chain(SPEC, mark) == [
        ["-m", "mark", "--mark", "0x5bf00001", "-j", "CONNMARK", "--save-mark"],
        ["-m", "mark", "--mark", "0x5bf00001", "-j", "ACCEPT"],
        ["-m", "connmark", "--mark", "0x5bf00001", "-j", "ACCEPT"],
        ["-j", "NFQUEUE", "--queue-num", "1"],
    ]


def test_out_chain_never_bypasses_the_queue():
    # without a reader the kernel must drop (a dead backup agent stays silent)
    for mark in (None, iptables.fast_mark(9)):
        assert all("--queue-bypass" not in rule for rule in iptables.out_chain(SPEC, mark))


def test_restore_input_backup():
    assert iptables.restore_input(SPEC) == BACKUP_RESTORE


def test_restore_input_primary():
    assert iptables.restore_input(SPEC, iptables.fast_mark(1)) == PRIMARY_RESTORE_EPOCH_1


@pytest.mark.parametrize("generation, mark", [
    (0, 0x5BF00000),
    (1, 0x5BF00001),
    (0xFFFFF, 0x5BFFFFFF),
    (0x100000, 0x5BF00000),  # wraps
    (0x100001, 0x5BF00001),
    (0x123456, 0x5BF23456),
])
def test_fast_mark_wraps_generations(generation, mark):
    assert iptables.fast_mark(generation) == mark
    assert iptables.fast_mark(generation) & ~iptables.MARK_GENERATIONS == iptables.MARK_BASE
    assert iptables.fast_mark(generation) < 2 ** 32


def test_consecutive_generations_have_distinct_marks():
    marks = {iptables.fast_mark(g) for g in range(1, 1000)}
    assert len(marks) == 999


# --- Rules with a fake run ---------------------------------------------------------------

class FakeRun:
    """Records (argv, stdin) of each call; ``-D`` succeeds ``leftover_jumps`` times."""

    def __init__(self, leftover_jumps=0, list_output=LIST_LINE, delete_always_succeeds=False):
        self.calls = []
        self.kwargs = []
        self.leftover_jumps = leftover_jumps
        self.list_output = list_output
        self.delete_always_succeeds = delete_always_succeeds

    def __call__(self, argv, input=None, **kwargs):
        self.calls.append((list(argv), input))
        self.kwargs.append(kwargs)
        returncode, stdout = 0, ""
        if argv[:len(IPTABLES)] == IPTABLES and "-D" in argv:
            if self.delete_always_succeeds:
                returncode = 0
            elif self.leftover_jumps > 0:
                self.leftover_jumps -= 1
            else:
                returncode = 1
        if "-L" in argv:
            stdout = self.list_output
        if returncode and kwargs.get("check"):
            raise subprocess.CalledProcessError(returncode, argv)
        return SimpleNamespace(returncode=returncode, stdout=stdout, stderr="")

    def argvs(self):
        return [argv for argv, _ in self.calls]


def test_enter_removes_leftovers_restores_backup_chain_then_jumps():
    run = FakeRun(leftover_jumps=2)
    rules = iptables.Rules(SPEC, run=run)
    assert rules.__enter__() is rules
    assert run.calls == [
        (IPTABLES + ["-D", *JUMP], None),
        (IPTABLES + ["-D", *JUMP], None),
        (IPTABLES + ["-D", *JUMP], None),  # fails: the loop stops
        (["iptables-restore", "--noflush"], BACKUP_RESTORE),
        (IPTABLES + ["-A", *JUMP], None),
    ]
    assert rules.mark is None


def test_enter_with_no_leftovers_tries_one_delete():
    run = FakeRun()
    with iptables.Rules(SPEC, run=run):
        pass
    assert run.argvs()[0] == IPTABLES + ["-D", *JUMP]
    assert run.argvs()[1] == ["iptables-restore", "--noflush"]


def test_leftover_removal_is_bounded():
    run = FakeRun(delete_always_succeeds=True)
    iptables.Rules(SPEC, run=run).__enter__()
    deletes = [argv for argv in run.argvs() if "-D" in argv]
    assert len(deletes) == 16
    assert run.argvs()[-1] == IPTABLES + ["-A", *JUMP]


def test_commands_are_checked_and_bounded_in_time():
    run = FakeRun()
    with iptables.Rules(SPEC, run=run) as rules:
        rules.set_fast_path(iptables.fast_mark(2))
    by_argv = dict(zip((tuple(argv) for argv in run.argvs()), run.kwargs))
    assert by_argv[("iptables-restore", "--noflush")]["check"] is True
    assert by_argv[tuple(IPTABLES + ["-A", *JUMP])]["check"] is True
    assert by_argv[tuple(IPTABLES + ["-D", *JUMP])]["check"] is False
    for kwargs in run.kwargs:
        assert kwargs["text"] is True
        assert kwargs["capture_output"] is True
        assert 0 < kwargs["timeout"] <= 30


def test_enter_propagates_a_failed_restore():
    def run(argv, input=None, **kwargs):
        if argv[0] == "iptables-restore":
            raise subprocess.CalledProcessError(2, argv)
        return SimpleNamespace(returncode=1, stdout="")
    with pytest.raises(subprocess.CalledProcessError):
        iptables.Rules(SPEC, run=run).__enter__()


def test_set_fast_path_restores_with_the_mark_and_back():
    run = FakeRun()
    rules = iptables.Rules(SPEC, run=run)
    mark = iptables.fast_mark(1)
    rules.set_fast_path(mark)
    assert run.calls == [(["iptables-restore", "--noflush"], PRIMARY_RESTORE_EPOCH_1)]
    assert rules.mark == mark
    rules.set_fast_path(None)
    assert run.calls[-1] == (["iptables-restore", "--noflush"], BACKUP_RESTORE)
    assert rules.mark is None


def test_set_fast_path_keeps_the_old_mark_when_restore_fails():
    def run(argv, input=None, **kwargs):
        raise subprocess.CalledProcessError(1, argv)
    rules = iptables.Rules(SPEC, run=run)
    with pytest.raises(subprocess.CalledProcessError):
        rules.set_fast_path(iptables.fast_mark(1))
    assert rules.mark is None


def test_exit_deletes_jump_flushes_and_deletes_chain():
    run = FakeRun()
    rules = iptables.Rules(SPEC, run=run)
    rules.__enter__()
    before = len(run.calls)
    run.leftover_jumps = 1  # the jump we added
    rules.__exit__(None, None, None)
    assert run.argvs()[before:] == [
        IPTABLES + ["-D", *JUMP],
        IPTABLES + ["-D", *JUMP],  # fails: no more copies
        IPTABLES + ["-F", "sbft-out"],
        IPTABLES + ["-X", "sbft-out"],
    ]
    assert all(kwargs["check"] is False for kwargs in run.kwargs[before:])


def test_rules_added_equal_rules_removed():
    run = FakeRun()
    with iptables.Rules(SPEC, run=run) as rules:
        run.leftover_jumps = 1  # from now on the jump we added is there to delete
        rules.set_fast_path(iptables.fast_mark(4))
        rules.set_fast_path(None)
    argvs = run.argvs()
    added = [argv for argv in argvs if "-A" in argv]
    assert len(added) == 1
    after_add = argvs[argvs.index(added[0]) + 1:]
    removed = [argv for argv in after_add if "-D" in argv]
    index = added[0].index("-A")
    assert removed[0] == added[0][:index] + ["-D"] + added[0][index + 1:]
    # the only chain created (by every restore) is the one flushed and deleted at the end
    restores = [stdin for _, stdin in run.calls if stdin is not None]
    assert len(restores) == 3
    assert all(stdin.splitlines()[1] == ":sbft-out - [0:0]" for stdin in restores)
    assert argvs[-2:] == [IPTABLES + ["-F", "sbft-out"], IPTABLES + ["-X", "sbft-out"]]


def test_exit_runs_even_when_the_body_raises():
    run = FakeRun()
    with pytest.raises(RuntimeError):
        with iptables.Rules(SPEC, run=run):
            raise RuntimeError("agent failed")
    assert run.argvs()[-1] == IPTABLES + ["-X", "sbft-out"]


def test_fast_path_packets_parses_the_rule_counter():
    run = FakeRun(list_output=LIST_LINE)
    rules = iptables.Rules(SPEC, run=run)
    rules.set_fast_path(iptables.fast_mark(1))
    assert rules.fast_path_packets() == 15
    assert run.calls[-1] == (IPTABLES + ["-L", "sbft-out", "3", "-v", "-x", "-n"], None)


def test_fast_path_packets_is_zero_without_a_mark():
    run = FakeRun(list_output=LIST_LINE)
    rules = iptables.Rules(SPEC, run=run)
    assert rules.fast_path_packets() == 0
    assert run.calls == []  # no iptables call at all


@pytest.mark.parametrize("output", ["", "\n", "iptables: Index of listing too big.\n",
                                    "Chain sbft-out (1 references)\n"])
def test_fast_path_packets_is_zero_for_unexpected_output(output):
    rules = iptables.Rules(SPEC, run=FakeRun(list_output=output))
    rules.set_fast_path(iptables.fast_mark(1))
    assert rules.fast_path_packets() == 0
