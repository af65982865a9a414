-- shard_topk(servers, q, k): the k rows of items_s nearest to q over the
-- shards behind the named postgres_fdw servers, searched concurrently
-- (docs/sharding.md).  Run on the coordinator after CREATE EXTENSION dblink.
--
-- A Merge Append over foreign partitions asks the shards one after the other
-- (three round trips each) and ships their vectors; this sends every shard
-- its own ORDER BY ... LIMIT k query without waiting (dblink_send_query),
-- then collects (id, distance) pairs and keeps the k nearest.  Connections
-- are named after their servers, opened with the servers' options (so
-- options '-c gnnvec.ef_search=N' applies) and user mappings, and kept for
-- the session; after an error they are closed, so the next call starts
-- clean instead of finding a query still in flight.
CREATE FUNCTION shard_topk(servers text[], q vector, k integer)
RETURNS TABLE (id bigint, distance double precision)
LANGUAGE plpgsql AS $$
DECLARE
	srv text;
	sql text := format('SELECT id, v <-> %L::vector FROM items_s ORDER BY v <-> %L::vector LIMIT %s',
					   q, q, k);
BEGIN
	FOREACH srv IN ARRAY servers LOOP
		IF srv <> ALL (coalesce(dblink_get_connections(), '{}')) THEN
			PERFORM dblink_connect(srv, srv);
		END IF;
		PERFORM dblink_send_query(srv, sql);
	END LOOP;
	RETURN QUERY
		SELECT r.id, r.d FROM unnest(servers) AS s(name),
			dblink_get_result(s.name) AS r(id bigint, d double precision)
		ORDER BY r.d LIMIT k;
	-- each query ends with an empty result, read before the next one is sent
	PERFORM FROM unnest(servers) AS s(name), dblink_get_result(s.name) AS r(id bigint, d double precision);
EXCEPTION WHEN OTHERS THEN
	FOREACH srv IN ARRAY servers LOOP
		IF srv = ANY (coalesce(dblink_get_connections(), '{}')) THEN
			PERFORM dblink_disconnect(srv);
		END IF;
	END LOOP;
	RAISE;
END $$;
