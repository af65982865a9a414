# bench/relevance_load.sh, sourced by bench/rerank_relevance.sh and
# bench/rerank_latency.sh: relevance_load SET_DIR DB loads a set made by
# bench/rerank_relevance_data.py into database DB (items, train and heldout
# tables, replaced) and indexes the items as the relevance bench does
# (m 16, ef_construction 64).
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
