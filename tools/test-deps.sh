#!/bin/sh
# What the tests need beyond PyPI: Debian's Chromium for the console's browser tests
# (Playwright drives /usr/bin/chromium and never downloads a browser) and a CJK font so
# the screenshots they save are legible. Does nothing when both are already there.
set -eu
if command -v chromium >/dev/null 2>&1 && fc-list :lang=zh 2>/dev/null | grep -q .; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-wqy-microhei
