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

-- 8-bit codes: an index larger than the budget caches codes (L2, inner
-- product and cosine; float vectors for L1), its scans find what exact
-- search finds when ef_search covers the table, and the check finds
-- every code within half a step of its vector.
SET enable_seqscan = off;
CREATE TABLE sq (id int PRIMARY KEY, v vector(32));
INSERT INTO sq SELECT i, array(SELECT (hashint8(i * 64 + j) % 100000) / 1e5 * (1 + j % 5) + 0.1 * j
		FROM generate_series(1, 32) j)::real[]::vector
	FROM generate_series(1, 3000) i;
CREATE INDEX sq_l2 ON sq USING gnnhnsw (v vector_l2_ops) WITH (m = 8, ef_construction = 32);
CREATE INDEX sq_cos ON sq USING gnnhnsw (v vector_cosine_ops) WITH (m = 8, ef_construction = 32);
CREATE INDEX sq_l1 ON sq USING gnnhnsw (v vector_l1_ops) WITH (m = 8, ef_construction = 32);
SELECT pg_relation_size('sq_l2') > 256 * 1024 AS larger_than_budget;
-- top 10 of every 100th row by each operator, through whatever scan runs
CREATE FUNCTION sq_top10(op text) RETURNS TABLE (qid int, ids int[]) LANGUAGE plpgsql AS $$
BEGIN
	RETURN QUERY EXECUTE format(
		'SELECT q.id, array(SELECT id FROM sq ORDER BY v %s q.v LIMIT 10)
		 FROM sq q WHERE q.id %% 100 = 0 ORDER BY q.id', op);
END $$;
SET gnnvec.scan_cache_size = '256kB';
SET gnnvec.ef_search = 200;
CREATE TEMP TABLE c_l2 AS SELECT * FROM sq_top10('<->');
CREATE TEMP TABLE c_cos AS SELECT * FROM sq_top10('<=>');
CREATE TEMP TABLE c_l1 AS SELECT * FROM sq_top10('<+>');
SELECT index, codes FROM gnnvec_scan_cache() WHERE index::text LIKE 'sq%' ORDER BY index::text;
SELECT * FROM gnnvec_index_check('sq_l2');
SELECT * FROM gnnvec_index_check('sq_cos');
SELECT * FROM gnnvec_index_check('sq_l1');
SET enable_indexscan = off;
SET enable_seqscan = on;
CREATE TEMP TABLE e_l2 AS SELECT * FROM sq_top10('<->');
CREATE TEMP TABLE e_cos AS SELECT * FROM sq_top10('<=>');
CREATE TEMP TABLE e_l1 AS SELECT * FROM sq_top10('<+>');
-- recall@10 against exact search, per operator
SELECT op, count(*) AS queries,
	avg(cardinality(array(SELECT unnest(c.ids) INTERSECT SELECT unnest(e.ids)))) >= 9.9 AS recall_ok
FROM (SELECT '<->' AS op, * FROM c_l2 UNION ALL SELECT '<=>', * FROM c_cos
	  UNION ALL SELECT '<+>', * FROM c_l1) c
JOIN (SELECT '<->' AS op, * FROM e_l2 UNION ALL SELECT '<=>', * FROM e_cos
	  UNION ALL SELECT '<+>', * FROM e_l1) e USING (op, qid)
GROUP BY op ORDER BY op;
RESET enable_indexscan;
RESET enable_seqscan;

-- at ef_search 10 a code's error can put a true neighbour just behind the
-- 10th: a scan with codes orders a few more candidates by exact distance,
-- and finds as many true neighbours as a scan that reads every vector from
-- its page (without those few: 0.9652 against 0.9747)
CREATE FUNCTION sq_l2_top10() RETURNS TABLE (qid int, ids int[]) LANGUAGE sql AS $$
	SELECT q.id, array(SELECT id FROM sq ORDER BY v <-> q.v LIMIT 10)
	FROM sq q WHERE q.id % 3 = 0 ORDER BY q.id
$$;
CREATE FUNCTION sq_recall(got regclass) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
	r numeric;
BEGIN
	EXECUTE format('SELECT avg(cardinality(array(SELECT unnest(g.ids) INTERSECT SELECT unnest(e.ids)))) / 10
		FROM %s g JOIN exact10 e USING (qid)', got) INTO r;
	RETURN r;
END $$;
SET enable_indexscan = off;
CREATE TEMP TABLE exact10 AS SELECT * FROM sq_l2_top10();
RESET enable_indexscan;
SET enable_seqscan = off;
SET gnnvec.ef_search = 10;
SET gnnvec.scan_cache_size = '256kB';
SELECT count(*) AS queries FROM sq_l2_top10();	-- fills the cache
CREATE TEMP TABLE codes10 AS SELECT * FROM sq_l2_top10();
SELECT codes FROM gnnvec_scan_cache() WHERE index = 'sq_l2'::regclass;
SET gnnvec.scan_cache_size = 0;
CREATE TEMP TABLE pages10 AS SELECT * FROM sq_l2_top10();
SELECT sq_recall('codes10') >= sq_recall('pages10') - 0.001 AS codes_recall_ok,
	sq_recall('pages10') > 0.9 AS pages_recall_ok;
RESET enable_seqscan;
RESET gnnvec.ef_search;
RESET gnnvec.scan_cache_size;
DROP TABLE sq;
DROP FUNCTION sq_top10(text);
DROP FUNCTION sq_l2_top10();
DROP FUNCTION sq_recall(regclass);
