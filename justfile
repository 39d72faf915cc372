# Atlantic's developer commands. `just up` runs the whole system; `just test` runs the suite.
# Both set up what a fresh clone lacks: the virtual environment, the dependencies, the services.

set shell := ["bash", "-euo", "pipefail", "-c"]

bin := ".venv/bin"

# List the recipes.
default:
    @just --list

# Create .venv and install Atlantic with its dev tools; again only when pyproject.toml changes.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x .venv/bin/python ] || python3 -m venv .venv
    stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
        rm -f .venv/.installed-*
        touch "$stamp"
    fi

# Start every handler set, with NATS, PostgreSQL, Redis, migrations, an admin and demo data.
up: setup
    {{bin}}/atlantic up

# Debian's chromium, for the dashboard's browser tests (Playwright cannot download its own here).
browser:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x /usr/bin/chromium ] && exit 0
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# Run the whole test suite: the fast tier and the tests on real servers (arguments go to pytest).
test *args: setup browser
    {{bin}}/atlantic services
    {{bin}}/pytest {{args}}

# Only the fast tier: the tests that need no server (pure tables, contracts, parsers), in seconds.
test-fast *args: setup
    {{bin}}/pytest -m fast {{args}}

# Lint.
lint: setup
    {{bin}}/ruff check .

# Write docs/asyncapi.json and docs/asyncapi.yaml from the code.
docs: setup
    {{bin}}/atlantic docs

# Measure every workload beside its ceiling; append the table to BENCHMARKS.md (`just bench --quick`).
bench *args: setup
    {{bin}}/atlantic services
    {{bin}}/atlantic bench {{args}}
