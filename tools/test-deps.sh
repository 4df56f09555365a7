#!/bin/sh
# What the tests need beyond PyPI: Debian's Chromium for the console's browser tests
# (Playwright drives /usr/bin/chromium and never downloads a browser), a CJK font so
# the screenshots they save are legible, and sox + libsndfile to decode the shipped IVR
# prompts the way FreeSWITCH's mod_sndfile does. Does nothing when all are already there.
set -eu
if command -v chromium >/dev/null 2>&1 && fc-list :lang=zh 2>/dev/null | grep -q . \
  && command -v sox >/dev/null 2>&1 \
  && python3 -c 'import ctypes.util as u, sys; sys.exit(not u.find_library("sndfile"))'; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-wqy-microhei sox libsndfile1
