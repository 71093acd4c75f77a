#!/bin/sh
# sbft_ryu's two commands, for a fresh Debian 12 / Ubuntu machine, run as root (in a root
# shell as written below; from a user account with sudo, as `sudo ./run.sh demo`):
#
#   ./run.sh demo    set everything up, then run the Mininet demo
#   ./run.sh test    set everything up, then run the unit and integration tests
#   ./run.sh bench   set everything up, then run the benchmarks (minutes; writes docs/)
#   ./run.sh setup   set everything up only
#
# "Everything": the apt packages, a virtual environment in .venv (from the system Python, so
# Mininet's module is visible), Ryu 4.34 and the other Python packages, the lab package
# (mininet/lab), the compatibility hook,
# and a running Open vSwitch (started directly where no systemd runs). Safe to run again.
set -eu

cd "$(dirname "$0")"
REPO=$(pwd)
VENV="$REPO/.venv"
PY="$VENV/bin/python"

APT_PACKAGES="openvswitch-switch mininet haproxy keepalived iptables ethtool iproute2 \
iputils-ping net-tools curl wrk tcpdump psmisc procps libnetfilter-queue-dev gcc make \
python3 python3-venv python3-dev python3-cryptography etcd-server etcd-client"

say() { printf '\n=== %s\n' "$*"; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "run.sh: run as root (Mininet, Open vSwitch and iptables need it): in a root shell," \
            "or with sudo: sudo $0 $*" >&2
        exit 1
    fi
}

install_apt() {
    missing=""
    for pkg in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
            || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        say "apt-get install$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing
    fi
}

start_ovs() {
    if ovs-vsctl -t 5 show >/dev/null 2>&1; then
        return
    fi
    say "starting Open vSwitch"
    if [ -d /run/systemd/system ]; then
        systemctl start openvswitch-switch
    else
        /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random
    fi
    ovs-vsctl -t 10 show >/dev/null
}

install_venv() {
    if [ ! -x "$PY" ]; then
        say "creating $VENV"
        /usr/bin/python3 -m venv --system-site-packages "$VENV"
    fi
    stamp="$VENV/.sbft-installed"
    if [ -f "$stamp" ] && [ "$stamp" -nt setup.cfg ] && [ "$stamp" -nt mininet/lab/pyproject.toml ]
    then
        return
    fi
    say "installing Python packages into $VENV"
    "$PY" -m pip install -q --upgrade "pip>=25.3"
    # Ryu 4.34's sdist needs an old setuptools to build (its hooks call a removed API); the
    # build constraint applies only to building it, not to what gets installed.
    constraint="$VENV/ryu-build-constraint.txt"
    echo "setuptools<60" > "$constraint"
    "$PY" -m pip install -q --build-constraint "$constraint" "ryu==4.34"
    "$PY" -m pip install -q -e ".[test,bench]"
    # the lab (Lab, demos, traffic tools): not part of the runtime package; editable, as it
    # drives this checkout's mininet/sbft_topo.py
    "$PY" -m pip install -q -e mininet/lab
    "$PY" -m sbft_ryu._ryu_compat install >/dev/null
    "$VENV/bin/ryu-manager" --version >/dev/null
    touch "$stamp"
}

setup() {
    need_root "$@"
    install_apt
    start_ovs
    install_venv
}

case "${1:-}" in
    setup)
        setup "$@"
        ;;
    demo)
        setup "$@"
        say "demo: Mininet, ryu-manager, HAProxy replicas, agents (passive mode)"
        "$PY" -m sbft_lab --demo
        say "demo: active mode (connections survive the primary)"
        "$PY" -m sbft_lab --demo --mode active
        say "demo: Byzantine output voting (lying replicas are cut off)"
        exec "$PY" -m sbft_lab --demo --mode voting
        ;;
    test)
        setup "$@"
        say "tests: unit, then integration (real OVS, ryu-manager, HAProxy, Mininet)"
        shift
        exec "$PY" -m pytest tests "$@"
        ;;
    bench)
        setup "$@"
        shift
        "$PY" mininet/bench_failover.py "$@"
        "$PY" mininet/bench_voting.py
        "$PY" mininet/bench_restart.py
        "$PY" mininet/bench_heartbeats.py
        "$PY" mininet/bench_leader.py --docs docs
        exec "$PY" mininet/bench_uploads.py
        ;;
    *)
        echo "usage (as root): $0 demo|test|bench|setup" >&2
        exit 2
        ;;
esac
