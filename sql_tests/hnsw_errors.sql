-- gnnhnsw: every error path of the index and its functions.
CREATE EXTENSION IF NOT EXISTS gnnvec;
SET client_min_messages = warning;

CREATE TABLE he (id int, v vector(3), nodim vector, n int, t text);
INSERT INTO he VALUES (1, '[1,2,3]', '[1,2]', 1, 'a');

-- options out of range
CREATE INDEX ON he USING gnnhnsw (v) WITH (m = 1);
CREATE INDEX ON he USING gnnhnsw (v) WITH (m = 101);
CREATE INDEX ON he USING gnnhnsw (v) WITH (ef_construction = 3);
CREATE INDEX ON he USING gnnhnsw (v) WITH (ef_construction = 1001);
CREATE INDEX ON he USING gnnhnsw (v) WITH (m = 16, ef_construction = 31);
CREATE INDEX ON he USING gnnhnsw (v) WITH (m = 'abc');
CREATE INDEX ON he USING gnnhnsw (v) WITH (nonsense = 1);
-- bounds are inclusive
CREATE INDEX he_ok1 ON he USING gnnhnsw (v) WITH (m = 2, ef_construction = 4);
CREATE INDEX he_ok2 ON he USING gnnhnsw (v) WITH (m = 100, ef_construction = 1000);
DROP INDEX he_ok1, he_ok2;

-- a column without dimensions, a non-vector column, a wrong opclass
CREATE INDEX ON he USING gnnhnsw (nodim);
CREATE INDEX ON he USING gnnhnsw (n);
CREATE INDEX ON he USING gnnhnsw (t);
CREATE INDEX ON he USING gnnhnsw (v int4_ops);
CREATE INDEX ON he USING gnnhnsw (v vector_ops);
-- one column only, no uniqueness
CREATE INDEX ON he USING gnnhnsw (v, v);
CREATE UNIQUE INDEX ON he USING gnnhnsw (v);
-- dimensions beyond the type's limit cannot even be declared
CREATE TABLE he_big (v vector(16001));

-- scans: the index only orders; a query of other dimensions is refused
CREATE INDEX he_idx ON he USING gnnhnsw (v);
SET enable_seqscan = off;
SELECT id FROM he ORDER BY v <-> '[1,2]' LIMIT 1;
SELECT id FROM he WHERE v <-> '[1,2,3]' < 1;
RESET enable_seqscan;

-- settings out of range
SET gnnvec.ef_search = 0;
SET gnnvec.ef_search = 1001;
SET gnnvec.iterative_scan = sometimes;
SET gnnvec.max_scan_tuples = 0;

-- the inspection functions want a gnnhnsw index
SELECT * FROM gnnvec_index_check('he');
SELECT * FROM gnnvec_index_info('he');
CREATE INDEX he_btree ON he (id);
SELECT * FROM gnnvec_index_check('he_btree');
SELECT * FROM gnnvec_index_info('he_btree');
SELECT * FROM gnnvec_index_check(0);
SELECT * FROM gnnvec_index_check(NULL);

-- privileges: SELECT on the table is needed
CREATE ROLE he_nobody;
SET ROLE he_nobody;
SELECT * FROM gnnvec_index_check('he_idx');
RESET ROLE;
DROP ROLE he_nobody;

DROP TABLE he;
