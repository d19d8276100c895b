#!/usr/bin/env bash
# The plain shell deploy that flakeship's end-to-end time is compared with
# (scripts/bench): the same steps flakeship takes for a service target, with
# nothing around them. Fetch the branch into a bare cache, build the exact
# commit into a nix profile, restart the unit, poll the health URL until it
# answers 2xx. The polling is bench/healthwait's: flakeship's own schedule
# and kind of client (at once, then from 10 ms doubling to 1 s, a fresh
# connection each time), so both sides wait for the service alike.
#
#   deploy.sh CACHE CLONE_URL SHA PROFILE ATTR UNIT HEALTH_URL
#
# NIX_FLAGS (shell words) are passed to every nix call, as flakeship passes
# FLAKESHIP_NIX_FLAGS. HEALTHWAIT is the bench/healthwait binary (default:
# healthwait from PATH).
set -euo pipefail
if [ "$#" -ne 7 ]; then
	echo "usage: deploy.sh CACHE CLONE_URL SHA PROFILE ATTR UNIT HEALTH_URL" >&2
	exit 2
fi
cache=$1 url=$2 sha=$3 profile=$4 attr=$5 unit=$6 health=$7
eval "nix_flags=(${NIX_FLAGS:-})"
[ -d "$cache" ] || git clone --bare --quiet "$url" "$cache"
git -C "$cache" fetch --quiet origin +refs/heads/main:refs/heads/main
nix "${nix_flags[@]}" build --profile "$profile" "git+file://$cache?ref=main&rev=$sha#$attr"
systemctl --user restart "$unit"
exec "${HEALTHWAIT:-healthwait}" -timeout 30s "$health"
