-- gnnhnsw: building, scanning, inserting, options and error paths.
CREATE EXTENSION IF NOT EXISTS gnnvec;
SET client_min_messages = warning;

CREATE TABLE hb (id int PRIMARY KEY, v vector(3));
INSERT INTO hb VALUES (1, '[1,1,1]'), (2, '[2,2,2]'), (3, '[1,1,2]'),
	(4, NULL), (5, '[0,0,0]'), (6, '[1,1,1]'), (7, '[10,10,10]');
CREATE INDEX hb_l2 ON hb USING gnnhnsw (v vector_l2_ops);

SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM hb ORDER BY v <-> '[1,1,1]' LIMIT 3;
SELECT id, v <-> '[1,1,1]' AS d FROM hb ORDER BY v <-> '[1,1,1]', id LIMIT 5;
SELECT id FROM hb ORDER BY v <-> '[1,1,1]' LIMIT 10;
-- inserts after the build, including a duplicate that joins an element
INSERT INTO hb SELECT i, ARRAY[i, i + 1, i + 2]::real[]::vector FROM generate_series(8, 300) i;
INSERT INTO hb VALUES (301, '[1,1,1]');
-- without iterative scans a scan returns the ef_search (40) nearest
-- elements: 42 rows, as '[1,1,1]' is one element holding three rows
SELECT count(*) FROM (SELECT id FROM hb ORDER BY v <-> '[1,1,1]' LIMIT 400) s;
SELECT id FROM hb ORDER BY v <-> '[1,1,1]' LIMIT 4;
SELECT * FROM gnnvec_index_check('hb_l2');
SELECT elements, deleted_elements, heap_tids, dims, m, ef_construction FROM gnnvec_index_info('hb_l2');
RESET enable_seqscan;

-- options are stored and shown
CREATE INDEX hb_opt ON hb USING gnnhnsw (v vector_l2_ops) WITH (m = 4, ef_construction = 10);
SELECT reloptions FROM pg_class WHERE relname = 'hb_opt';
SELECT m, ef_construction, dims FROM gnnvec_index_info('hb_opt');
DROP INDEX hb_opt;

-- without ORDER BY distance the index is not used, even when forced
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM hb WHERE id < 5;
EXPLAIN (COSTS OFF) SELECT count(*) FROM hb;
RESET enable_seqscan;
-- and a seq scan wins for ORDER BY without LIMIT on a big enough table
EXPLAIN (COSTS OFF) SELECT id FROM hb ORDER BY v <-> '[1,1,1]';

-- cosine: zero vectors and NULLs are skipped, not errors
CREATE TABLE hb_cos (id int, v vector(2));
INSERT INTO hb_cos VALUES (1, '[1,0]'), (2, '[0,0]'), (3, '[0,1]'), (4, NULL), (5, '[1,1]');
CREATE INDEX hb_cos_idx ON hb_cos USING gnnhnsw (v vector_cosine_ops);
INSERT INTO hb_cos VALUES (6, '[0,0]'), (7, '[2,2.1]');
SELECT elements, heap_tids FROM gnnvec_index_info('hb_cos_idx');
SET enable_seqscan = off;
SELECT id FROM hb_cos ORDER BY v <=> '[1,1]' LIMIT 10;
-- a zero query vector has no direction: every distance is NaN, rows come in any order
SELECT count(*) FROM (SELECT id FROM hb_cos ORDER BY v <=> '[0,0]' LIMIT 10) s;
-- a NULL query likewise returns rows, in no particular order
SELECT count(*) FROM (SELECT id FROM hb ORDER BY v <-> NULL LIMIT 5) s;
RESET enable_seqscan;
DROP TABLE hb_cos;

-- inner product and L1 on a small set: exact order
CREATE TABLE hb_ip (id int, v vector(2));
INSERT INTO hb_ip VALUES (1, '[1,0]'), (2, '[2,0]'), (3, '[3,1]'), (4, '[-1,0]');
CREATE INDEX ON hb_ip USING gnnhnsw (v vector_ip_ops);
CREATE INDEX ON hb_ip USING gnnhnsw (v vector_l1_ops);
SET enable_seqscan = off;
SELECT id, v <#> '[1,1]' AS neg_ip FROM hb_ip ORDER BY v <#> '[1,1]' LIMIT 4;
SELECT id, v <+> '[0,0]' AS l1 FROM hb_ip ORDER BY v <+> '[0,0]' LIMIT 4;
RESET enable_seqscan;
DROP TABLE hb_ip;

-- an UNLOGGED table: the index has an init fork and works
CREATE UNLOGGED TABLE hb_unl (id int, v vector(3));
CREATE INDEX hb_unl_idx ON hb_unl USING gnnhnsw (v);
INSERT INTO hb_unl SELECT id, v FROM hb WHERE v IS NOT NULL;
SELECT pg_relation_size('hb_unl_idx', 'init') > 0 AS has_init_fork;
SET enable_seqscan = off;
SELECT id FROM hb_unl ORDER BY v <-> '[1,1,2]' LIMIT 1;
RESET enable_seqscan;
SELECT count(*) FROM gnnvec_index_check('hb_unl_idx');
DROP TABLE hb_unl;

-- REINDEX and REINDEX CONCURRENTLY
REINDEX INDEX hb_l2;
REINDEX INDEX CONCURRENTLY hb_l2;
SELECT count(*) FROM gnnvec_index_check('hb_l2');
SET enable_seqscan = off;
SELECT id FROM hb ORDER BY v <-> '[1,1,2]' LIMIT 1;
RESET enable_seqscan;

-- vectors beyond one page: 4000 dimensions are split over data tuples
SELECT setseed(0.5);
CREATE TABLE hb_big (id int, v vector(4000));
INSERT INTO hb_big SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 4000) WHERE i > 0)::vector
	FROM generate_series(1, 60) i;
CREATE INDEX hb_big_idx ON hb_big USING gnnhnsw (v) WITH (m = 6, ef_construction = 24);
INSERT INTO hb_big SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 4000) WHERE i > 0)::vector
	FROM generate_series(61, 100) i;
SELECT elements, dims FROM gnnvec_index_info('hb_big_idx');
SELECT count(*) FROM gnnvec_index_check('hb_big_idx');
SET enable_seqscan = off;
SELECT bool_and(found = (SELECT id FROM hb_big b ORDER BY b.v <-> q.v LIMIT 1)) AS finds_itself
	FROM (SELECT id AS found, v FROM hb_big WHERE id % 7 = 0) q;
RESET enable_seqscan;
-- 2000 dimensions fit inline, but not beside a neighbour tuple of m = 48
CREATE TABLE hb_2k (id int, v vector(2000));
INSERT INTO hb_2k SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 2000) WHERE i > 0)::vector
	FROM generate_series(1, 20) i;
CREATE INDEX hb_2k_idx ON hb_2k USING gnnhnsw (v) WITH (m = 48, ef_construction = 100);
INSERT INTO hb_2k SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 2000) WHERE i > 0)::vector
	FROM generate_series(21, 40) i;
SELECT elements FROM gnnvec_index_info('hb_2k_idx');
SELECT count(*) FROM gnnvec_index_check('hb_2k_idx');
SET enable_seqscan = off;
SELECT bool_and(found = (SELECT id FROM hb_2k b ORDER BY b.v <-> q.v LIMIT 1)) AS finds_itself
	FROM (SELECT id AS found, v FROM hb_2k) q;
RESET enable_seqscan;
DROP TABLE hb_2k;
-- cosine on split vectors, and the largest the type allows
CREATE INDEX hb_big_cos ON hb_big USING gnnhnsw (v vector_cosine_ops);
SET enable_seqscan = off;
SELECT id FROM hb_big ORDER BY v <=> (SELECT v FROM hb_big WHERE id = 77) LIMIT 1;
RESET enable_seqscan;
DROP TABLE hb_big;
CREATE TABLE hb_max (v vector(16000));
INSERT INTO hb_max SELECT array_fill(i::real, ARRAY[16000])::vector FROM generate_series(1, 3) i;
CREATE INDEX hb_max_idx ON hb_max USING gnnhnsw (v);
SET enable_seqscan = off;
SELECT vector_dims(v), (v::real[])[16000] FROM hb_max ORDER BY v <-> array_fill(2.2::real, ARRAY[16000])::vector LIMIT 1;
RESET enable_seqscan;
SELECT count(*) FROM gnnvec_index_check('hb_max_idx');
DROP TABLE hb_max;

-- a build that outgrows maintenance_work_mem goes on on disk, with a NOTICE
CREATE TABLE hb_spill (id int, v vector(64));
INSERT INTO hb_spill SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 64) WHERE i > 0)::vector
	FROM generate_series(1, 2500) i;
SET maintenance_work_mem = '1MB';
SET client_min_messages = notice;
CREATE INDEX hb_spill_idx ON hb_spill USING gnnhnsw (v);
SET client_min_messages = warning;
RESET maintenance_work_mem;
SELECT elements, heap_tids FROM gnnvec_index_info('hb_spill_idx');
SELECT count(*) FROM gnnvec_index_check('hb_spill_idx');
SET enable_seqscan = off;
SELECT bool_and(found = (SELECT id FROM hb_spill b ORDER BY b.v <-> q.v LIMIT 1)) AS finds_itself
	FROM (SELECT id AS found, v FROM hb_spill WHERE id % 50 = 0) q;
RESET enable_seqscan;
DROP TABLE hb_spill;

-- the operator classes validate
SELECT amname FROM pg_am WHERE amname = 'gnnhnsw';
SELECT amvalidate(oid) FROM pg_opclass WHERE opcmethod = (SELECT oid FROM pg_am WHERE amname = 'gnnhnsw') ORDER BY opcname;

DROP TABLE hb;
