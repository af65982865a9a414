#!/usr/bin/env bash
# Overhead of the trajectory executor hook on pgbench select-only (-S).
#
#   bench/lora_pgbench.sh [SECONDS_PER_RUN] [ROUNDS] [CLIENTS]   (default 2 10 1)
#
# A private installation (like test/run.sh's, built without asserts) and a
# throwaway cluster at scale 10.  Each round runs, back to back:
#   plain      gnnvec not loaded at all
#   hook off   gnnvec preloaded, gnnvec.record_trajectories = off
#   hook on    gnnvec preloaded, recording every executed node
# Machines here are shared and noisy (other loads only ever slow a run down),
# so many short runs alternate, and the best and the median of each
# configuration are reported with their ratio to plain.  Writes
# bench/out/lora_pgbench.csv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
secs=${1:-2}
rounds=${2:-10}
clients=${3:-1}
PG_CONFIG=${PG_CONFIG:-pg_config}
bindir=$($PG_CONFIG --bindir)

make -s ASSERTS=0 >/dev/null
work=$(mktemp -d /tmp/gnnvec-lora-pgbench.XXXXXX)
chmod 755 "$work"
inst=$work/inst
mkdir -p "$inst" bench/out
# (cp complains about re-creating parents it already made; check the result)
cp -a --parents "$bindir" "$($PG_CONFIG --pkglibdir)" "$($PG_CONFIG --sharedir)" "$inst"/ 2>/dev/null || true
[ -x "$inst$bindir/postgres" ] || { echo "could not copy the PostgreSQL installation"; exit 1; }
make -s install ASSERTS=0 DESTDIR="$inst" >/dev/null
export PATH="$inst$bindir:$PATH"

if [ "$(id -u)" = 0 ]; then
	chown -R postgres "$work"
	runas=(runuser -u postgres --)
else
	runas=()
fi
as_user() { "${runas[@]}" env PATH="$PATH" "$@"; }
data=$work/data
export PGHOST=$work PGPORT=54339
as_user initdb -D "$data" -U postgres --no-sync -A trust >/dev/null
cat >>"$data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$work'
port = $PGPORT
fsync = off
jit = off
EOF
stop() { as_user pg_ctl -D "$data" -m fast -w stop >/dev/null 2>&1 || true; }
trap stop EXIT

# start with the given shared_preload_libraries
restart() {
	stop
	echo "shared_preload_libraries = '$1'" >"$data/bench.conf"
	grep -q "include 'bench.conf'" "$data/postgresql.conf" || echo "include 'bench.conf'" >>"$data/postgresql.conf"
	as_user pg_ctl -D "$data" -l "$work/server.log" -w start >/dev/null
}

restart ''
as_user pgbench -i -q -s 10 postgres >/dev/null 2>&1
as_user psql -X -q -c 'CREATE EXTENSION gnnvec' postgres

echo "round,config,tps" >bench/out/lora_pgbench.csv
# recording is set per session; loading gnnvec needs a restart
tps() { as_user env PGOPTIONS="$1" pgbench -n -S -c "$clients" -j "$clients" -T "$secs" postgres 2>/dev/null |
	sed -n 's/^tps = \([0-9.]*\) .*/\1/p'; }

for r in $(seq 1 "$rounds"); do
	restart ''
	echo "$r,plain,$(tps '')" >>bench/out/lora_pgbench.csv
	restart gnnvec
	echo "$r,hook off,$(tps '-c gnnvec.record_trajectories=off')" >>bench/out/lora_pgbench.csv
	echo "$r,hook on,$(tps '-c gnnvec.record_trajectories=on')" >>bench/out/lora_pgbench.csv
done
recorded=$(as_user psql -X -At -c 'SELECT total FROM gnnvec_trajectory_stats()' postgres)

echo "pgbench -S, $clients client(s), $rounds x ${secs}s runs per configuration ($recorded nodes recorded):"
awk -F, 'NR > 1 { v[$2] = v[$2] " " $3 }
	function sorted(s, a,   n, i, j, t) {
		n = split(s, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n
	}
	END {
		split("plain|hook off|hook on", order, "|")
		for (k = 1; k <= 3; k++) {
			n = sorted(v[order[k]], a)
			best[k] = a[n]
			med[k] = n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		}
		printf "  %-9s %10s %8s %10s %8s\n", "", "best tps", "", "median", ""
		for (k = 1; k <= 3; k++)
			printf "  %-9s %10.0f %+7.1f%% %10.0f %+7.1f%%\n", order[k], best[k],
				(best[k] / best[1] - 1) * 100, med[k], (med[k] / med[1] - 1) * 100
	}' bench/out/lora_pgbench.csv
rm -rf "$work"
