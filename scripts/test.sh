#!/usr/bin/env bash
# Run the whole suite with `colcon test` (ament_cmake_pytest, one CTest per test file), then
# print one closing line "tests: N passed, N failed, N skipped" read from the JUnit results.
# Exits non-zero when a test failed or when no test ran. Expects scripts/env.sh to be sourced.
# Extra arguments go to ctest, e.g. `./run test -R test_schema`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
results="$ROOT/build/failrecov_ros/test_results"
rm -rf "$results"
ctest_args=(--output-on-failure)
[ $# -gt 0 ] && ctest_args+=("$@")
status=0
colcon --log-base "$ROOT/log" test --base-paths . --packages-select failrecov_ros \
  --build-base "$ROOT/build" --install-base "$ROOT/install" \
  --event-handlers console_direct+ status- --return-code-on-test-failure --ctest-args "${ctest_args[@]}" || status=$?
python3 - "$results" <<'PY' || status=1
import glob, sys, xml.etree.ElementTree as ET
tests = failed = skipped = 0
for path in glob.glob(f"{sys.argv[1]}/**/*.xml", recursive=True):
    root = ET.parse(path).getroot()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        tests += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
passed = tests - failed - skipped
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
if tests == 0:
    print("error: no test ran", file=sys.stderr)
sys.exit(1 if failed or tests == 0 else 0)
PY
exit $status
