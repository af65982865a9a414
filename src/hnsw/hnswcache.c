/*
 * hnswcache.c
 *		Vectors by element TID for index scans (see hnswscan.c): a scan
 *		that finds an element's vector here computes its distance without
 *		a trip through the buffer manager.
 *
 * An open-addressing map from the key to a slot (key and slot side by side:
 * one cache line per probe), and the slots in chunks of HNSW_VCACHE_CHUNK,
 * so that growing never moves a vector; a slot is the caller's word then
 * the vector (or its 8-bit code), read together.  Every byte counts
 * against the budget (*used <= limit), the map included.  PostgreSQL-free;
 * unit-tested in test/unit/test_hnswgraph.c.
 *
 * Codes are per-vector scalar quantisation (min and step of the vector's
 * own coordinates, 256 levels), so no training pass is needed and a
 * coordinate is off by at most half a step.  Their distances go through
 * one float-by-byte dot product: x.q = offset * sum(q) + scale * code.q,
 * and |x - q|^2 = |x|^2 - 2 x.q + |q|^2 with |x|^2 kept exact.
 */
#define HNSW_PURE
#include "hnsw/hnsw.h"

#include <math.h>
#include <string.h>

void
hnsw_vcache_init(HnswVecCache *c, int dim, bool codes, size_t *used,
				 size_t limit, const HnswAllocator *a)
{
	memset(c, 0, sizeof(HnswVecCache));
	c->dim = dim;
	c->codes = codes;
	c->used = used;
	c->limit = limit;
	c->a = a;
}

void
hnsw_vcache_clear(HnswVecCache *c)
{
	const HnswAllocator *a = c->a;

	for (int i = 0; i < c->nchunks; i++)
		a->free(a->ctx, c->chunks[i]);
	if (c->chunks)
		a->free(a->ctx, c->chunks);
	if (c->map)
		a->free(a->ctx, c->map);
	*c->used -= c->bytes;
	hnsw_vcache_init(c, c->dim, c->codes, c->used, c->limit, a);
}

/* Take bytes from the budget, or refuse. */
static bool
take(HnswVecCache *c, size_t bytes)
{
	if (*c->used + bytes > c->limit)
		return false;
	*c->used += bytes;
	c->bytes += bytes;
	return true;
}

static void
give_back(HnswVecCache *c, size_t bytes)
{
	*c->used -= bytes;
	c->bytes -= bytes;
}

/* A map of size slots (a power of two) holding what the old one held. */
static bool
map_resize(HnswVecCache *c, uint64_t size)
{
	const HnswAllocator *a = c->a;
	HnswVecCacheEntry *map;
	uint64_t	oldsize = c->map ? c->mask + 1 : 0;

	if (!take(c, size * sizeof(HnswVecCacheEntry)))
		return false;
	map = a->alloc(a->ctx, sizeof(HnswVecCacheEntry) * size);
	memset(map, 0, sizeof(HnswVecCacheEntry) * size);
	for (uint64_t i = 0; i < oldsize; i++)
	{
		uint64_t	j;

		if (c->map[i].key == 0)
			continue;
		j = hnsw_key_hash(c->map[i].key) & (size - 1);
		while (map[j].key != 0)
			j = (j + 1) & (size - 1);
		map[j] = c->map[i];
	}
	if (c->map)
	{
		a->free(a->ctx, c->map);
		give_back(c, oldsize * sizeof(HnswVecCacheEntry));
	}
	c->map = map;
	c->mask = size - 1;
	return true;
}

size_t
hnsw_vcache_entry_bytes(const HnswVecCache *c)
{
	if (c->codes)				/* padded: the next slot's word stays aligned */
		return sizeof(HnswVecCode) + (((size_t) c->dim + 7) & ~(size_t) 7);
	return sizeof(float) * c->dim;
}

/* Bytes of one slot: the caller's word, then the entry. */
static inline size_t
slot_bytes(const HnswVecCache *c)
{
	return sizeof(uint64_t) + hnsw_vcache_entry_bytes(c);
}

static inline char *
slot_at(const HnswVecCache *c, int32_t slot)
{
	return c->chunks[slot / HNSW_VCACHE_CHUNK] +
		(size_t) (slot % HNSW_VCACHE_CHUNK) * slot_bytes(c);
}

/* One more chunk of slots. */
static bool
add_chunk(HnswVecCache *c)
{
	const HnswAllocator *a = c->a;

	if (c->nchunks == c->capchunks)
	{
		int			cap = c->capchunks ? c->capchunks * 2 : 16;
		char	  **chunks = a->alloc(a->ctx, sizeof(char *) * cap);

		if (c->nchunks > 0)
		{
			memcpy(chunks, c->chunks, sizeof(char *) * c->nchunks);
			a->free(a->ctx, c->chunks);
		}
		c->chunks = chunks;
		c->capchunks = cap;
	}
	if (!take(c, HNSW_VCACHE_CHUNK * slot_bytes(c)))
		return false;
	c->chunks[c->nchunks++] = a->alloc(a->ctx, HNSW_VCACHE_CHUNK * slot_bytes(c));
	return true;
}

void
hnsw_vcache_prefetch(const HnswVecCache *c, uint64_t key)
{
	if (c->map != NULL)
		hnsw_prefetch(&c->map[hnsw_key_hash(key) & c->mask]);
}

const void *
hnsw_vcache_get(const HnswVecCache *c, uint64_t key)
{
	uint64_t	j;

	if (c->map == NULL)
		return NULL;
	j = hnsw_key_hash(key) & c->mask;
	while (c->map[j].key != 0)
	{
		if (c->map[j].key == key)
			return slot_at(c, c->map[j].slot) + sizeof(uint64_t);
		j = (j + 1) & c->mask;
	}
	return NULL;
}

/* The 8-bit code of vec (dim floats) into out: header, then dim bytes. */
static void
encode(const float *vec, int dim, char *out)
{
	HnswVecCode h;
	uint8_t    *code = (uint8_t *) out + sizeof(HnswVecCode);
	float		lo = vec[0],
				hi = vec[0];

	for (int i = 1; i < dim; i++)
	{
		lo = vec[i] < lo ? vec[i] : lo;
		hi = vec[i] > hi ? vec[i] : hi;
	}
	memset(&h, 0, sizeof(h));
	h.offset = lo;
	h.scale = (hi - lo) / 255.0f;
	for (int i = 0; i < dim; i++)
	{
		float		level = h.scale > 0 ? rintf((vec[i] - lo) / h.scale) : 0;

		code[i] = (uint8_t) (level < 0 ? 0 : level > 255 ? 255 : level);
		h.norm2 += vec[i] * vec[i];
	}
	memcpy(out, &h, sizeof(h));
}

bool
hnsw_vcache_put(HnswVecCache *c, uint64_t key, const float *vec, uint64_t aux)
{
	uint64_t	j;
	int32_t		slot = c->n;
	char	   *p;

	if (hnsw_vcache_get(c, key) != NULL)
		return true;
	if ((c->map == NULL || (uint64_t) (c->n + 1) * 2 > c->mask + 1) &&
		!map_resize(c, c->map ? (c->mask + 1) * 2 : 1024))
		return false;
	if (slot == c->nchunks * HNSW_VCACHE_CHUNK && !add_chunk(c))
		return false;
	p = slot_at(c, slot);
	memcpy(p, &aux, sizeof(uint64_t));
	if (c->codes)
		encode(vec, c->dim, p + sizeof(uint64_t));
	else
		memcpy(p + sizeof(uint64_t), vec, sizeof(float) * c->dim);
	j = hnsw_key_hash(key) & c->mask;
	while (c->map[j].key != 0)
		j = (j + 1) & c->mask;
	c->map[j].key = key;
	c->map[j].slot = slot;
	c->n++;
	return true;
}

void
hnsw_vcache_query(HnswVecQuery *q, const float *x, int dim)
{
	q->x = x;
	q->sum = 0;
	q->norm2 = 0;
	for (int i = 0; i < dim; i++)
	{
		q->sum += x[i];
		q->norm2 += x[i] * x[i];
	}
}

float
hnsw_vcache_distance(const HnswVecCache *c, HnswMetric metric,
					 const HnswVecQuery *q, const void *entry)
{
	HnswVecCode h;
	float		dot;

	if (!c->codes)
		return hnsw_distance(metric, q->x, entry, c->dim);
	memcpy(&h, entry, sizeof(h));
	dot = h.offset * q->sum +
		h.scale * vec_kernels.dot_u8(q->x, (const uint8_t *) entry + sizeof(h), c->dim);
	return metric == HNSW_METRIC_L2 ? h.norm2 - 2 * dot + q->norm2 : -dot;
}

bool
hnsw_vcache_matches(const HnswVecCache *c, const void *entry, const float *vec)
{
	HnswVecCode h;
	const uint8_t *code = (const uint8_t *) entry + sizeof(h);
	float		tol;
	double		norm2 = 0;

	if (!c->codes)
		return memcmp(vec, entry, sizeof(float) * c->dim) == 0;
	memcpy(&h, entry, sizeof(h));
	tol = h.scale / 2 * 1.001f;
	for (int i = 0; i < c->dim; i++)
	{
		if (fabsf(h.offset + h.scale * code[i] - vec[i]) > tol + 1e-6f * fabsf(vec[i]))
			return false;
		norm2 += (double) vec[i] * vec[i];
	}
	return fabs(h.norm2 - norm2) <= 1e-5 * norm2 + 1e-30;
}

float
hnsw_vcache_error(const HnswVecCache *c, const void *entry)
{
	HnswVecCode h;

	if (!c->codes)
		return 0;
	memcpy(&h, entry, sizeof(h));
	return h.scale / 2;
}
