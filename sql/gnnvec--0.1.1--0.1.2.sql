-- gnnvec 0.1.1 -> 0.1.2
\echo Use "ALTER EXTENSION gnnvec UPDATE TO '0.1.2'" to load this file. \quit

-- The scan cache: whether an index's cache holds 8-bit codes (the index
-- is larger than gnnvec.scan_cache_size) or float vectors.
DROP FUNCTION gnnvec_scan_cache();
CREATE FUNCTION gnnvec_scan_cache(OUT index regclass, OUT generation bigint,
	OUT elements bigint, OUT bytes bigint, OUT codes boolean)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;
