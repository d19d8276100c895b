#!/usr/bin/env bash
# Times flakeship's start-up on an existing state directory, for comparing
# two builds on the same store (scripts/bench times one build on stores it
# fills itself). Each of RUNS starts BIN with STATE as its state directory
# and a build-only target, and prints the milliseconds from the exec to the
# "flakeship listening" log line (by the line's own timestamp) and to the
# first 200 from /healthz, and whether the store was checked whole at open
# (the "store opened" line's checked=, if the build logs it); then stops it
# with SIGTERM, by its PID, and waits for it.
#
#   bench/prefill -db STATE/flakeship.db -n 1000000
#   bench/startup.sh BIN STATE RUNS
set -euo pipefail
if [ $# -ne 3 ]; then
	echo "usage: bench/startup.sh BIN STATE RUNS" >&2
	exit 2
fi
bin=$1 state=$2 runs=$3
tmp=$(mktemp -d)
pid=""
cleanup() {
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/secret"

for i in $(seq "$runs"); do
	log=$tmp/start-$i.log
	t0=$(date +%s%N)
	env -i "PATH=$PATH" "HOME=$state" FLAKESHIP_LISTEN=127.0.0.1:0 "FLAKESHIP_STATE_DIR=$state" \
		FLAKESHIP_TARGETS=app FLAKESHIP_TARGET_APP_FORGE=github FLAKESHIP_TARGET_APP_REPO=bench/app \
		"FLAKESHIP_TARGET_APP_CLONE_URL=$tmp/app.git" FLAKESHIP_TARGET_APP_ATTR=packages.x86_64-linux.default \
		FLAKESHIP_TARGET_APP_ACTIVATE=none "FLAKESHIP_TARGET_APP_WEBHOOK_SECRET_FILE=$tmp/secret" \
		"$bin" 2>"$log" &
	pid=$!
	# Up to 10 minutes: a whole-file check of a big store takes a while.
	deadline=$((SECONDS + 600))
	while ! line=$(grep -m1 'listening" addr=' "$log"); do
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "bench/startup.sh: $bin exited before listening:" >&2
			cat "$log" >&2
			exit 1
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "bench/startup.sh: $bin did not listen within 10 minutes" >&2
			exit 1
		fi
		sleep 0.001
	done
	addr=$(sed -n 's/.* addr=\([^ ]*\).*/\1/p' <<<"$line")
	t1=$(date -d "$(sed -n 's/^time=\([^ ]*\) .*/\1/p' <<<"$line")" +%s%N)
	until curl -fsS -o /dev/null "http://$addr/healthz"; do
		sleep 0.001
	done
	t2=$(date +%s%N)
	checked=$(sed -n 's/.*msg="store opened".* checked=\([a-z]*\).*/\1/p' "$log")
	echo "run $i: listening_ms=$(((t1 - t0) / 1000000)) healthz_ms=$(((t2 - t0) / 1000000)) checked=${checked:-?}"
	kill -TERM "$pid"
	wait "$pid" || true
	pid=""
done
