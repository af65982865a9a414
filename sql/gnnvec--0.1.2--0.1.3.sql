-- gnnvec 0.1.2 -> 0.1.3
\echo Use "ALTER EXTENSION gnnvec UPDATE TO '0.1.3'" to load this file. \quit

-- The scan cache: with gnnvec preloaded, indexes' caches in shared memory
-- (gnnvec.shared_scan_cache_size), one row each for this database's
-- indexes, beside this backend's own caches.
DROP FUNCTION gnnvec_scan_cache();
CREATE FUNCTION gnnvec_scan_cache(OUT index regclass, OUT generation bigint,
	OUT elements bigint, OUT bytes bigint, OUT codes boolean, OUT shared boolean)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;
