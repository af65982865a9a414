-- gnnhnsw and the planner: ORDER BY distance LIMIT k takes the index when
-- a search is cheaper than computing every row's distance.  784-dimension
-- vectors are stored out of line, so the heap looks small to a seq scan.
CREATE EXTENSION IF NOT EXISTS gnnvec;
SET client_min_messages = warning;
SELECT setseed(0.5);
CREATE TABLE hp (id int, v vector(784));
INSERT INTO hp SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 784) WHERE i > 0)::vector
	FROM generate_series(1, 3000) i;
CREATE INDEX hp_idx ON hp USING gnnhnsw (v vector_l2_ops);
ANALYZE hp;
CREATE TABLE hp_q AS SELECT v FROM hp WHERE id = 1;

SET gnnvec.ef_search = 40;
EXPLAIN (COSTS OFF) SELECT id FROM hp ORDER BY v <-> (SELECT v FROM hp_q) LIMIT 10;
SET gnnvec.ef_search = 200;
EXPLAIN (COSTS OFF) SELECT id FROM hp ORDER BY v <-> (SELECT v FROM hp_q) LIMIT 10;
SET gnnvec.ef_search = 400;
EXPLAIN (COSTS OFF) SELECT id FROM hp ORDER BY v <-> (SELECT v FROM hp_q) LIMIT 10;
SELECT id FROM hp ORDER BY v <-> (SELECT v FROM hp_q) LIMIT 1;
-- a larger k still costs one round
EXPLAIN (COSTS OFF) SELECT id FROM hp ORDER BY v <-> (SELECT v FROM hp_q) LIMIT 100;
RESET gnnvec.ef_search;

-- every row wanted: reading and expanding the whole graph costs more than
-- a seq scan and a sort, and a plain scan would stop after ef_search
EXPLAIN (COSTS OFF) SELECT id FROM hp ORDER BY v <-> (SELECT v FROM hp_q);
-- no distance to order by: never the index
EXPLAIN (COSTS OFF) SELECT id FROM hp WHERE id < 10;
DROP TABLE hp, hp_q;
