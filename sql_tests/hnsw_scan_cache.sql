-- The per-backend scan cache (gnnvec.scan_cache_size): the same rows with
-- it off and on, emptied when VACUUM frees elements, and checked by
-- gnnvec_index_check against the pages.
CREATE EXTENSION IF NOT EXISTS gnnvec;
SET enable_seqscan = off;
CREATE TABLE sc (id int PRIMARY KEY, v vector(4));
INSERT INTO sc SELECT i, ARRAY[sin(i), cos(i), sin(i * 0.3), cos(i * 0.7)]::real[]::vector
	FROM generate_series(1, 500) i;
CREATE INDEX sc_v ON sc USING gnnhnsw (v) WITH (m = 4, ef_construction = 16);
CREATE FUNCTION sc_top5() RETURNS TABLE (qid int, ids int[]) LANGUAGE sql AS $$
	SELECT q.id, array(SELECT id FROM sc ORDER BY v <-> q.v LIMIT 5)
	FROM sc q WHERE q.id % 25 = 0 ORDER BY q.id
$$;

-- off: nothing is cached
SET gnnvec.scan_cache_size = 0;
CREATE TEMP TABLE r0 AS SELECT * FROM sc_top5();
SELECT count(*) AS caches FROM gnnvec_scan_cache();

-- on: the same rows, and the cache holds the elements met
RESET gnnvec.scan_cache_size;
CREATE TEMP TABLE r1 AS SELECT * FROM sc_top5();
SELECT count(*) AS differ FROM r0 JOIN r1 USING (qid) WHERE r0.ids <> r1.ids;
SELECT index, elements > 0 AS filled, bytes > 0 AS has_bytes
	FROM gnnvec_scan_cache();
-- generations start at a random number (see hnsw_fill_meta); count from it
CREATE TEMP TABLE g0 AS SELECT generation FROM gnnvec_scan_cache();
CREATE FUNCTION sc_bumps(g bigint) RETURNS bigint LANGUAGE sql AS
	$$ SELECT (g - (SELECT generation FROM g0) + 4294967296) % 4294967296 $$;
SELECT * FROM gnnvec_index_check('sc_v');

-- a VACUUM that frees elements bumps the generation; inserts then take
-- the freed elements over, with other vectors.  The cache of generation 0
-- is not checked against them (it would disagree), and the next scan
-- starts it over (one bump).
DELETE FROM sc WHERE id % 3 = 0;
VACUUM sc;
INSERT INTO sc SELECT i, ARRAY[cos(i), sin(i * 1.7), cos(i * 0.2), sin(i)]::real[]::vector
	FROM generate_series(501, 650) i;
SELECT * FROM gnnvec_index_check('sc_v');
SELECT index, sc_bumps(generation) AS bumps FROM gnnvec_scan_cache();
SET gnnvec.ef_search = 400;
CREATE TEMP TABLE r2 AS SELECT * FROM sc_top5();
SELECT index, sc_bumps(generation) AS bumps, elements > 0 AS filled FROM gnnvec_scan_cache();
SELECT * FROM gnnvec_index_check('sc_v');

-- the index returns the exact top 5 (ef_search covers the table)
SET enable_indexscan = off;
SET enable_seqscan = on;
CREATE TEMP TABLE r3 AS SELECT * FROM sc_top5();
SELECT count(*) AS queries, count(*) FILTER (WHERE r2.ids <> r3.ids) AS differ
	FROM r2 JOIN r3 USING (qid);
RESET enable_indexscan;
RESET gnnvec.ef_search;
DROP TABLE sc CASCADE;
DROP FUNCTION sc_top5();
DROP FUNCTION sc_bumps(bigint);
