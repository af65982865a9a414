-- gnnvec_search returns only rows the caller may read: visible to its
-- snapshot, with SELECT on the table, and never past row-level security.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS gnnvec;

-- autovacuum off: the deleted row's index entry must stay
CREATE TABLE sv (id int PRIMARY KEY, owner text, v vector(4))
	WITH (autovacuum_enabled = off);
INSERT INTO sv SELECT i, CASE WHEN i % 2 = 0 THEN 'regress_sv_reader' ELSE 'other' END,
	ARRAY[i, i % 7, i % 5, 1]::real[]::vector
	FROM generate_series(1, 200) i;
CREATE INDEX sv_v ON sv USING gnnhnsw (v vector_l2_ops) WITH (m = 8);

-- row 50 is the nearest; once deleted (committed, not vacuumed) it is not
-- returned, and every TID returned names a row this snapshot sees
SELECT g.id FROM gnnvec_search('sv_v', '[50,1,0,1]', 1) s JOIN sv g ON g.ctid = s.tid;
DELETE FROM sv WHERE id = 50;
SELECT count(*) AS returned, count(g.id) AS visible, bool_and(g.id <> 50) AS deleted_row_gone
FROM gnnvec_search('sv_v', '[50,1,0,1]', 5) s LEFT JOIN sv g ON g.ctid = s.tid;
-- an updated row is returned once, at its new version's TID
UPDATE sv SET owner = 'other' WHERE id = 51;
SELECT count(*) AS returned, count(g.id) AS visible, count(*) FILTER (WHERE g.id = 51) AS row_51
FROM gnnvec_search('sv_v', '[51,2,1,1]', 5) s LEFT JOIN sv g ON g.ctid = s.tid;
-- a row inserted by a transaction that rolled back is never returned
BEGIN;
INSERT INTO sv VALUES (1000, 'other', '[50,1,0,1]');
SELECT count(*) FILTER (WHERE g.id = 1000) AS own_insert_seen
FROM gnnvec_search('sv_v', '[50,1,0,1]', 5) s JOIN sv g ON g.ctid = s.tid;
ROLLBACK;
SELECT count(*) AS returned, count(g.id) AS visible
FROM gnnvec_search('sv_v', '[50,1,0,1]', 5) s LEFT JOIN sv g ON g.ctid = s.tid;

-- privileges: no SELECT on the table, no search
CREATE ROLE regress_sv_reader;
SET ROLE regress_sv_reader;
SELECT count(*) FROM gnnvec_search('sv_v', '[50,1,0,1]', 5);
RESET ROLE;

-- row-level security: refused for a role the policies apply to, with a
-- hint; the index scan the hint names returns only the policy's rows
GRANT SELECT ON sv TO regress_sv_reader;
ALTER TABLE sv ENABLE ROW LEVEL SECURITY;
CREATE POLICY sv_own ON sv FOR SELECT USING (owner = current_user);
SET ROLE regress_sv_reader;
SELECT count(*) FROM gnnvec_search('sv_v', '[50,1,0,1]', 5);
SET enable_seqscan = off;
SET gnnvec.rerank = on;
SELECT bool_and(owner = 'regress_sv_reader') AS only_own_rows, count(*)
FROM (SELECT owner FROM sv ORDER BY v <-> '[50,1,0,1]' LIMIT 5) t;
RESET gnnvec.rerank;
RESET enable_seqscan;
-- with row_security off the policies cannot be bypassed either
SET row_security = off;
SELECT count(*) FROM gnnvec_search('sv_v', '[50,1,0,1]', 5);
RESET row_security;
RESET ROLE;
-- the table owner (to whom the policies do not apply) still searches
SELECT count(*) FROM gnnvec_search('sv_v', '[50,1,0,1]', 5);

DROP TABLE sv;
DROP ROLE regress_sv_reader;
