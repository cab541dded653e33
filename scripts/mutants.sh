#!/usr/bin/env bash
# Puts fixed bugs of issue 9 back, one at a time, and checks that the
# differential test (differential_test.go) catches each of them.
#
# Each scripts/mutants/*.patch is a small patch to the plugin's code that
# undoes one fix. For each, the script copies the working tree to a scratch
# directory, applies the patch there (the working tree is never touched), runs
# TestDifferential with fixed seeds and the default skip list, and expects it
# to FAIL. First it runs the same on the unpatched copy, which must pass.
#
#   bash scripts/mutants.sh                 # every mutant
#   bash scripts/mutants.sh item01          # the mutants whose name contains item01
#   SEEDS="1 2 3 4" STEPS=500 bash scripts/mutants.sh
#
# Exit status: 0 when every mutant is caught; 1 when one is missed or its
# patch no longer applies (refresh it against the current code); 2 when the
# unpatched tree fails already.
set -euo pipefail

root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
seeds=${SEEDS:-"1 2 3"}
steps=${STEPS:-300}
filter=${1:-}
GO=${GO:-go}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# copy puts the working tree (tracked and untracked, not ignored files) in
# $scratch/tree.
copy() {
	rm -rf "$scratch/tree"
	mkdir -p "$scratch/tree"
	(cd "$root" && git ls-files -z --cached --others --exclude-standard |
		xargs -0 cp --parents -t "$scratch/tree" 2>/dev/null || true)
}

# run runs the differential test on $scratch/tree with each seed, stops at
# the first failure and prints where it failed. It returns 1 on a failure.
run() {
	local seed out
	for seed in $seeds; do
		if ! out=$(cd "$scratch/tree" && $GO test -count=1 -run '^TestDifferential$' . \
			-args -diff.seed="$seed" -diff.steps="$steps" 2>&1); then
			echo "$out" | grep -E 'differential: seed|^\s+step [0-9]+|P3:|panic:|cannot|undefined' | head -12 | sed 's/^/    /'
			if ! echo "$out" | grep -q 'differential: seed'; then
				echo "    (the test did not get to run: see the output above)"
				return 3
			fi
			return 1
		fi
	done
	return 0
}

echo "==> unpatched tree, seeds $seeds, $steps steps"
copy
if ! run; then
	echo "mutants: the unpatched tree fails the differential test; fix that first"
	exit 2
fi
echo "    passes"

status=0
for patch in "$root"/scripts/mutants/*.patch; do
	name=$(basename "$patch" .patch)
	[[ -n "$filter" && "$name" != *"$filter"* ]] && continue
	echo "==> $name: $(grep -m1 '^#' "$patch" | sed 's/^# *//')"
	copy
	if ! (cd "$scratch/tree" && git apply "$patch" 2>/dev/null); then
		echo "    STALE: the patch no longer applies; refresh it against the current code"
		status=1
		continue
	fi
	rc=0
	run || rc=$?
	case $rc in
	0)
		echo "    MISSED: the differential test passes with the bug put back"
		status=1
		;;
	1) echo "    caught" ;;
	*)
		echo "    BROKEN: the patched tree does not build or the test does not start"
		status=1
		;;
	esac
done
exit $status
