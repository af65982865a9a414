/*
 * f32_to_copy.c
 *		Raw float32 rows -> a PostgreSQL binary COPY file of (id int4, v vector),
 *		so benchmarks load 100k vectors in a second.  Ids are 0-based row
 *		numbers, matching the ground-truth files.
 *
 * usage: f32_to_copy FILE.f32 DIM OUT.copy
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
put16(FILE *f, int16_t v)
{
	uint16_t	be = htons((uint16_t) v);

	fwrite(&be, 2, 1, f);
}

static void
put32(FILE *f, int32_t v)
{
	uint32_t	be = htonl((uint32_t) v);

	fwrite(&be, 4, 1, f);
}

int
main(int argc, char **argv)
{
	static const char signature[11] = "PGCOPY\n\377\r\n\0";
	FILE	   *in,
			   *out;
	int			dim;
	float	   *row;
	int32_t		id = 0;

	if (argc != 4 || (dim = atoi(argv[2])) < 1 || dim > 16000)
	{
		fprintf(stderr, "usage: f32_to_copy FILE.f32 DIM OUT.copy\n");
		return 2;
	}
	in = fopen(argv[1], "rb");
	out = fopen(argv[3], "wb");
	if (in == NULL || out == NULL)
	{
		perror("f32_to_copy");
		return 1;
	}
	row = malloc(sizeof(float) * dim);
	fwrite(signature, 1, sizeof(signature), out);
	put32(out, 0);				/* flags */
	put32(out, 0);				/* header extension length */
	while (fread(row, sizeof(float), dim, in) == (size_t) dim)
	{
		put16(out, 2);
		put32(out, 4);
		put32(out, id++);
		put32(out, 4 + 4 * dim);
		put16(out, (int16_t) dim);
		put16(out, 0);
		for (int i = 0; i < dim; i++)
		{
			uint32_t	bits;

			memcpy(&bits, &row[i], 4);
			put32(out, (int32_t) bits);
		}
	}
	put16(out, -1);
	if (fclose(out) != 0)
	{
		perror("f32_to_copy");
		return 1;
	}
	fclose(in);
	free(row);
	printf("%d rows\n", id);
	return 0;
}
