# bench/relevance_load.sh, sourced by bench/rerank_relevance.sh and
# bench/rerank_latency.sh: relevance_load SET_DIR DB loads a set made by
# bench/rerank_relevance_data.py into database DB (items, train and heldout
# tables, replaced) and indexes the items as the relevance bench does
# (m 16, ef_construction 64).  relevance_timing DB defines ms_per_query(cpu)
# there: the ms per held-out query of index scans (k 10, as the session is
# set), wall clock or, with cpu, the backend's CPU time (/proc/self/schedstat,
# as bench/pg_bench.sh).
relevance_load() {
	psql -X -q -v ON_ERROR_STOP=1 -d "$2" <<SQL
CREATE EXTENSION IF NOT EXISTS gnnvec;
DROP TABLE IF EXISTS items, train, heldout;
CREATE TABLE items (id int PRIMARY KEY, label int, v vector(64));
CREATE TABLE train (q vector(64), p vector(64));
CREATE TABLE heldout (qid int, label int, q vector(64));
\copy items FROM '$1/items.copy'
\copy train FROM '$1/train.copy'
\copy heldout FROM '$1/heldout.copy'
CREATE INDEX items_v ON items USING gnnhnsw (v vector_l2_ops) WITH (m = 16, ef_construction = 64);
ANALYZE items;
SQL
}

relevance_timing() {
	psql -X -q -v ON_ERROR_STOP=1 -d "$1" <<'SQL'
CREATE OR REPLACE FUNCTION ms_per_query(cpu bool DEFAULT false) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz := clock_timestamp();
	c0 float8 := split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint / 1e6;
	n int := 0;
	r record;
BEGIN
	FOR r IN SELECT q FROM heldout LOOP
		PERFORM id FROM (SELECT id FROM items ORDER BY v <-> r.q LIMIT 10) t;
		n := n + 1;
	END LOOP;
	IF cpu THEN
		RETURN (split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint / 1e6 - c0) / n;
	END IF;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000 / n;
END $$;
SQL
}
