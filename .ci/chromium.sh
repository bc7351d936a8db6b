# Sourced by .ci/run: the report and dashboard tests drive Debian's Chromium (/usr/bin/chromium); install it when
# it is missing. If it cannot be installed, those tests are skipped and pytest's summary says why.
command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
  || echo "ci: Chromium could not be installed here; the report and dashboard browser tests will be SKIPPED"
