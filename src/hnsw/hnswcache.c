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
 * against the budget (*used <= limit), the map included.  A fixed cache
 * (the shared scan cache, hnswshared.c) is laid out once in memory it is
 * given and never grows; puts publish their entries with atomic
 * operations, so that processes may put and get at once.  PostgreSQL-free;
 * unit-tested in test/unit/test_hnswgraph.c.
 *
 * A fixed cache may also hold each element's level-0 neighbour list, as
 * the slots of its neighbours (nlinks of them at most), so that a scan
 * walks the graph by slot numbers as an in-memory HNSW does (Malkov &
 * Yashunin 2018, and hnswlib's layout): no page and no map lookup per
 * neighbour.  A list is valid for a tag its writer gives, which the caller
 * ties to its index's modifications (hnswshared.c): writers claim a list by
 * a compare-and-swap of its tag to HNSW_LINKS_WRITING and only ever raise
 * it, and readers check it before and after they copy (a sequence lock), so
 * that a list is read whole or not at all.
 *
 * Codes are per-vector scalar quantisation (min and step of the vector's
 * own coordinates, 256 levels), so no training pass is needed and a
 * coordinate is off by at most half a step.  The query gets a signed 8-bit
 * code of its own, so that a distance is one byte-by-byte dot product
 * (VNNI's vpdpbusd takes 64 pairs per instruction), corrected by the
 * offsets and the exact sums and norms kept beside the codes (see
 * hnsw_vcache_distance).
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

	if (c->fixed)
	{
		memset(c->map, 0, sizeof(HnswVecCacheEntry) * (c->mask + 1));
		c->n = 0;
		return;
	}
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

static inline size_t
entry_bytes(int dim, bool codes)
{
	if (codes)					/* padded: the next slot's word stays aligned */
		return sizeof(HnswVecCode) + (((size_t) dim + 7) & ~(size_t) 7);
	return sizeof(float) * dim;
}

size_t
hnsw_vcache_entry_bytes(const HnswVecCache *c)
{
	return entry_bytes(c->dim, c->codes);
}

/* Bytes of a slot's neighbour list (its head and nlinks slot numbers). */
static inline size_t
links_bytes(int nlinks)
{
	if (nlinks == 0)
		return 0;
	return (sizeof(HnswVecLinks) + sizeof(int32_t) * nlinks + 7) & ~(size_t) 7;
}

/* Bytes of one slot: its neighbour list, the caller's word, the entry. */
static inline size_t
layout_slot_bytes(int dim, bool codes, int nlinks)
{
	return links_bytes(nlinks) + sizeof(uint64_t) + entry_bytes(dim, codes);
}

static inline size_t
slot_bytes(const HnswVecCache *c)
{
	return layout_slot_bytes(c->dim, c->codes, c->nlinks);
}

/*
 * A fixed cache's layout: its map (a power of two, at least twice the
 * capacity, so that a put always finds a free entry), the chunk pointers,
 * then the slots.
 */
static uint64_t
fixed_map_size(int64_t capacity)
{
	uint64_t	size = 16;

	while (size < 2 * (uint64_t) capacity)
		size *= 2;
	return size;
}

static size_t
fixed_chunks(int64_t capacity)
{
	return (capacity + HNSW_VCACHE_CHUNK - 1) / HNSW_VCACHE_CHUNK;
}

#define ALIGN16(x) (((x) + 15) & ~(size_t) 15)

size_t
hnsw_vcache_fixed_bytes(int dim, bool codes, int nlinks, int64_t capacity)
{
	return sizeof(HnswVecCacheEntry) * fixed_map_size(capacity) +
		ALIGN16(sizeof(char *) * fixed_chunks(capacity)) +
		(size_t) capacity * layout_slot_bytes(dim, codes, nlinks);
}

int64_t
hnsw_vcache_fixed_capacity(int dim, bool codes, int nlinks, size_t bytes)
{
	int64_t		lo = 0,
				hi = (int64_t) (bytes / layout_slot_bytes(dim, codes, nlinks));

	if (hi > INT32_MAX - 1)
		hi = INT32_MAX - 1;
	while (lo < hi)
	{
		int64_t		mid = lo + (hi - lo + 1) / 2;

		if (hnsw_vcache_fixed_bytes(dim, codes, nlinks, mid) <= bytes)
			lo = mid;
		else
			hi = mid - 1;
	}
	return lo;
}

void
hnsw_vcache_init_fixed(HnswVecCache *c, int dim, bool codes, int nlinks,
					   int64_t capacity, void *mem)
{
	uint64_t	mapsize = fixed_map_size(capacity);
	char	   *slots;

	memset(c, 0, sizeof(HnswVecCache));
	c->dim = dim;
	c->codes = codes;
	c->nlinks = nlinks;
	c->fixed = true;
	c->capacity = (int32_t) capacity;
	c->map = mem;
	c->mask = mapsize - 1;
	memset(c->map, 0, sizeof(HnswVecCacheEntry) * mapsize);
	c->chunks = (char **) (c->map + mapsize);
	c->nchunks = c->capchunks = (int) fixed_chunks(capacity);
	slots = (char *) c->chunks + ALIGN16(sizeof(char *) * c->nchunks);
	c->slots = slots;
	c->slot_size = slot_bytes(c);
	c->links_size = links_bytes(nlinks);
	for (int i = 0; i < c->nchunks; i++)
		c->chunks[i] = slots + (size_t) i * HNSW_VCACHE_CHUNK * slot_bytes(c);
	c->bytes = hnsw_vcache_fixed_bytes(dim, codes, nlinks, capacity);
}

int64_t
hnsw_vcache_count(const HnswVecCache *c)
{
	int32_t		n = __atomic_load_n(&c->n, __ATOMIC_RELAXED);

	return c->fixed && n > c->capacity ? c->capacity : n;
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

/* The entry of a slot, after its list and the caller's word. */
static inline const void *
slot_entry(const HnswVecCache *c, int32_t slot)
{
	return slot_at(c, slot) + c->links_size + sizeof(uint64_t);
}

static inline HnswVecLinks *
entry_links(const HnswVecCache *c, const void *entry)
{
	return (HnswVecLinks *) ((char *) entry - sizeof(uint64_t) - c->links_size);
}

/*
 * An entry's key is stored last (release), so that one seen here (acquire)
 * comes with its slot number and its slot's contents.
 */
const void *
hnsw_vcache_lookup(const HnswVecCache *c, uint64_t key, int32_t *slot)
{
	uint64_t	j,
				k;

	if (c->map == NULL)
		return NULL;
	j = hnsw_key_hash(key) & c->mask;
	while ((k = __atomic_load_n(&c->map[j].key, __ATOMIC_ACQUIRE)) != 0)
	{
		if (k == key)
		{
			*slot = (int32_t) c->map[j].slot - 1;
			return slot_entry(c, *slot);
		}
		j = (j + 1) & c->mask;
	}
	return NULL;
}

const void *
hnsw_vcache_get(const HnswVecCache *c, uint64_t key)
{
	int32_t		slot;

	return hnsw_vcache_lookup(c, key, &slot);
}

/*
 * Tagged records (a list, a heap TID) are a sequence lock whose tags only
 * rise: a reader reads the tag, copies, and reads the tag again; a writer
 * claims the record by a compare-and-swap of its tag to
 * HNSW_LINKS_WRITING, writes, and publishes its tag.  Equal tags around a
 * copy mean nothing was written in between, since no tag comes back.
 */
static inline uint64_t
tagged_begin(const uint64_t *tagp, uint64_t tag)
{
	uint64_t	t = __atomic_load_n(tagp, __ATOMIC_ACQUIRE);

	return t >= tag && t != HNSW_LINKS_WRITING ? t : 0;
}

static inline bool
tagged_end(const uint64_t *tagp, uint64_t t)
{
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	return __atomic_load_n(tagp, __ATOMIC_RELAXED) == t;
}

/* Claim for tag, unless a record of tag or later is there or being written. */
static inline bool
tagged_claim(uint64_t *tagp, uint64_t tag)
{
	uint64_t	t = __atomic_load_n(tagp, __ATOMIC_RELAXED);

	return t < tag &&
		__atomic_compare_exchange_n(tagp, &t, HNSW_LINKS_WRITING, false,
									__ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

static inline void
tagged_publish(uint64_t *tagp, uint64_t tag)
{
	__atomic_store_n(tagp, tag, __ATOMIC_RELEASE);
}

/* The slot numbers are checked against the slots taken all the same. */
int
hnsw_vcache_links(const HnswVecCache *c, const void *entry, uint64_t tag,
				  int32_t *out, uint64_t *nbr_sum)
{
	HnswVecLinks *l = entry_links(c, entry);
	uint64_t	t = tagged_begin(&l->tag, tag);
	int32_t		n,
				taken = (int32_t) hnsw_vcache_count(c);

	if (t == 0)
		return -1;
	n = __atomic_load_n(&l->n, __ATOMIC_RELAXED);
	if (n < 0 || n > c->nlinks)
		return -1;
	for (int i = 0; i < n; i++)
		out[i] = __atomic_load_n(&l->slots[i], __ATOMIC_RELAXED);
	if (nbr_sum != NULL)
		*nbr_sum = __atomic_load_n(&l->nbr_sum, __ATOMIC_RELAXED);
	if (!tagged_end(&l->tag, t))
		return -1;
	for (int i = 0; i < n; i++)
		if (out[i] < 0 || out[i] >= taken)
			return -1;
	return n;
}

void
hnsw_vcache_set_links(HnswVecCache *c, const void *entry, uint64_t tag,
					  const int32_t *slots, int n, uint64_t nbr_sum)
{
	HnswVecLinks *l = entry_links(c, entry);

	if (n > c->nlinks || !tagged_claim(&l->tag, tag))
		return;
	__atomic_store_n(&l->n, n, __ATOMIC_RELAXED);
	__atomic_store_n(&l->nbr_sum, nbr_sum, __ATOMIC_RELAXED);
	for (int i = 0; i < n; i++)
		__atomic_store_n(&l->slots[i], slots[i], __ATOMIC_RELAXED);
	tagged_publish(&l->tag, tag);
}

uint64_t
hnsw_vcache_heap(const HnswVecCache *c, const void *entry, uint64_t tag)
{
	HnswVecLinks *l = entry_links(c, entry);
	uint64_t	t = tagged_begin(&l->htag, tag),
				heap;

	if (t == 0)
		return 0;
	heap = __atomic_load_n(&l->heap, __ATOMIC_RELAXED);
	return tagged_end(&l->htag, t) ? heap : 0;
}

void
hnsw_vcache_set_heap(HnswVecCache *c, const void *entry, uint64_t tag,
					 uint64_t heap)
{
	HnswVecLinks *l = entry_links(c, entry);

	if (!tagged_claim(&l->htag, tag))
		return;
	__atomic_store_n(&l->heap, heap, __ATOMIC_RELAXED);
	tagged_publish(&l->htag, tag);
}

/*
 * The smallest and largest of x[0..n-1], n >= 1, in eight independent
 * lanes: one chain of compares would wait on each compare's latency.
 */
static void
vec_min_max(const float *x, int n, float *lo, float *hi)
{
	float		l[8],
				h[8];
	int			i;

	for (i = 0; i < 8; i++)
		l[i] = h[i] = x[0];
	for (i = 0; i + 8 <= n; i += 8)
		for (int j = 0; j < 8; j++)
		{
			l[j] = x[i + j] < l[j] ? x[i + j] : l[j];
			h[j] = x[i + j] > h[j] ? x[i + j] : h[j];
		}
	for (; i < n; i++)
	{
		l[0] = x[i] < l[0] ? x[i] : l[0];
		h[0] = x[i] > h[0] ? x[i] : h[0];
	}
	for (i = 1; i < 8; i++)
	{
		l[0] = l[i] < l[0] ? l[i] : l[0];
		h[0] = h[i] > h[0] ? h[i] : h[0];
	}
	*lo = l[0];
	*hi = h[0];
}

/*
 * The 8-bit code of vec (dim floats) into out: header, then dim bytes.
 * Levels are rounded by adding a half and truncating (the values are
 * non-negative), with a multiply, so that the loop has neither a division
 * nor a call to rintf (which x86-64 without SSE4.1 does not inline): a
 * backend encodes every vector it caches.
 */
static void
encode(const float *vec, int dim, char *out)
{
	HnswVecCode h;
	uint8_t    *code = (uint8_t *) out + sizeof(HnswVecCode);
	float		lo,
				hi,
				inv;

	vec_min_max(vec, dim, &lo, &hi);
	memset(&h, 0, sizeof(h));
	h.offset = lo;
	h.scale = (hi - lo) / 255.0f;
	inv = h.scale > 0 ? 1.0f / h.scale : 0;
	for (int i = 0; i < dim; i++)
	{
		float		level = (vec[i] - lo) * inv + 0.5f;

		code[i] = (uint8_t) (level < 255.0f ? (int) level : 255);
		h.norm2 += vec[i] * vec[i];
		h.sum += vec[i];
	}
	memcpy(out, &h, sizeof(h));
}

/* A slot of a fixed cache, or -1 when it is full. */
static int32_t
take_fixed_slot(HnswVecCache *c)
{
	int32_t		slot;

	/* look first, so that a full cache's n stops growing */
	if (__atomic_load_n(&c->n, __ATOMIC_RELAXED) >= c->capacity)
		return -1;
	slot = __atomic_fetch_add(&c->n, 1, __ATOMIC_RELAXED);
	return slot < c->capacity ? slot : -1;
}

/*
 * A slot of a growing cache (the map grown first, to keep it at most half
 * full), or -1 when the budget is spent.
 */
static int32_t
take_slot(HnswVecCache *c)
{
	if ((c->map == NULL || (uint64_t) (c->n + 1) * 2 > c->mask + 1) &&
		!map_resize(c, c->map ? (c->mask + 1) * 2 : 1024))
		return -1;
	if (c->n == c->nchunks * HNSW_VCACHE_CHUNK && !add_chunk(c))
		return -1;
	return c->n++;
}

bool
hnsw_vcache_put(HnswVecCache *c, uint64_t key, const float *vec, uint64_t aux)
{
	uint64_t	j;
	int32_t		slot;
	char	   *p;

	if (hnsw_vcache_get(c, key) != NULL)
		return true;
	slot = c->fixed ? take_fixed_slot(c) : take_slot(c);
	if (slot < 0)
		return false;
	p = slot_at(c, slot);
	if (c->nlinks > 0)
	{
		/* a cleared cache's slots keep their old lists: no list yet */
		HnswVecLinks *l = (HnswVecLinks *) p;

		l->key = key;
		__atomic_store_n(&l->tag, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&l->htag, 0, __ATOMIC_RELAXED);
		p += c->links_size;
	}
	memcpy(p, &aux, sizeof(uint64_t));
	if (c->codes)
		encode(vec, c->dim, p + sizeof(uint64_t));
	else
		memcpy(p + sizeof(uint64_t), vec, sizeof(float) * c->dim);

	/*
	 * Take a free map entry (another process may be taking it too), then
	 * publish the key: the slot's contents and number are visible to any
	 * reader that sees it.  Two processes putting the same key both succeed,
	 * in two entries; a get finds the first.
	 */
	j = hnsw_key_hash(key) & c->mask;
	for (;;)
	{
		uint32_t	free_entry = 0;

		if (__atomic_load_n(&c->map[j].slot, __ATOMIC_RELAXED) == 0 &&
			__atomic_compare_exchange_n(&c->map[j].slot, &free_entry,
										(uint32_t) slot + 1, false,
										__ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
			break;
		j = (j + 1) & c->mask;
	}
	__atomic_store_n(&c->map[j].key, key, __ATOMIC_RELEASE);
	return true;
}

/*
 * A query for cached distances: its squared norm and, for codes,
 * its own 8-bit code (offset, scale, levels -127..127 in codes, dim bytes
 * the caller owns), so that a code's distance is one byte-by-byte dot.
 */
void
hnsw_vcache_query(HnswVecQuery *q, const float *x, int dim, int8_t *codes)
{
	float		lo,
				hi,
				inv;

	q->x = x;
	q->norm2 = 0;
	q->absdev = 0;
	q->codesum = 0;
	vec_min_max(x, dim, &lo, &hi);
	for (int i = 0; i < dim; i++)
		q->norm2 += x[i] * x[i];
	q->offset = (lo + hi) / 2;
	q->scale = (hi - lo) / 254.0f;
	q->codes = codes;
	inv = q->scale > 0 ? 1.0f / q->scale : 0;
	for (int i = 0; i < dim; i++)
	{
		float		level = rintf((x[i] - q->offset) * inv);

		codes[i] = (int8_t) (level < -127.0f ? -127 : level > 127.0f ? 127 : level);
		q->codesum += codes[i];
		q->absdev += fabsf(x[i] - q->offset);
	}
}

/*
 * hnsw_distance from an entry.  For a code, with x ~ offset + scale * c
 * and q ~ q.offset + q.scale * qc:
 *   x.q = q.offset * sum(x) + sum(x * (q - q.offset))
 *       ~ q.offset * sum(x) + q.scale * (offset * sum(qc) + scale * c.qc)
 * where sum(x) and |x|^2 are kept exact, and |x - q|^2 = |x|^2 - 2 x.q +
 * |q|^2.
 */
float
hnsw_vcache_distance(const HnswVecCache *c, HnswMetric metric,
					 const HnswVecQuery *q, const void *entry)
{
	HnswVecCode h;
	float		dot;

	if (!c->codes)
		return hnsw_distance(metric, q->x, entry, c->dim);
	memcpy(&h, entry, sizeof(h));
	dot = q->offset * h.sum +
		q->scale * (h.offset * (float) q->codesum +
					h.scale * (float) vec_kernels.dot_u8_i8((const uint8_t *) entry + sizeof(h),
															q->codes, c->dim));
	return metric == HNSW_METRIC_L2 ? h.norm2 - 2 * dot + q->norm2 : -dot;
}

bool
hnsw_vcache_matches(const HnswVecCache *c, const void *entry, const float *vec)
{
	HnswVecCode h;
	const uint8_t *code = (const uint8_t *) entry + sizeof(h);
	float		tol;
	double		norm2 = 0,
				sum = 0,
				abssum = 0;

	if (!c->codes)
		return memcmp(vec, entry, sizeof(float) * c->dim) == 0;
	memcpy(&h, entry, sizeof(h));
	tol = h.scale / 2 * 1.001f;
	for (int i = 0; i < c->dim; i++)
	{
		if (fabsf(h.offset + h.scale * code[i] - vec[i]) > tol + 1e-6f * fabsf(vec[i]))
			return false;
		norm2 += (double) vec[i] * vec[i];
		sum += vec[i];
		abssum += fabs(vec[i]);
	}
	return fabs(h.norm2 - norm2) <= 1e-5 * norm2 + 1e-30 &&
		fabs(h.sum - sum) <= 1e-5 * abssum + 1e-30;
}

/*
 * A bound on |x.q - its estimate| above: with each coordinate of x off by
 * at most scale / 2 and each of q by q.scale / 2, the error is at most
 * scale / 2 * sum|q - q.offset| + q.scale / 2 * sum|x'|, where x' is the
 * decoded vector (|x'[i]| <= the larger of |offset| and |offset + 255 *
 * scale|).  L2 distances are off by at most twice that.
 */
float
hnsw_vcache_error(const HnswVecCache *c, const HnswVecQuery *q,
				  const void *entry)
{
	HnswVecCode h;
	float		xmax;

	if (!c->codes)
		return 0;
	memcpy(&h, entry, sizeof(h));
	xmax = fmaxf(fabsf(h.offset), fabsf(h.offset + 255 * h.scale));
	return h.scale / 2 * q->absdev + q->scale / 2 * xmax * c->dim;
}
