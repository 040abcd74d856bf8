/*
 * test_sha256.c — the dead-letter checksum against the FIPS 180-4 vectors
 * and the padding boundaries (55, 56, 63, 64, 119, 120 bytes), where a
 * wrong length block shows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"

static int passed, failed;

static void
check(const void *data, size_t len, const char *want)
{
	char hex[65];

	sha256_hex(data, len, hex);
	if (strcmp(hex, want) == 0) {
		passed++;
	} else {
		failed++;
		fprintf(stderr, "sha256 of %zu bytes: got %s, expected %s\n", len, hex, want);
	}
}

int
main(void)
{
	char *a = malloc(1000000);

	memset(a, 'a', 1000000);
	check("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	check("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	check("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56,
	      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	check(a, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	/* printf 'a%.0s' $(seq N) | sha256sum */
	check(a, 55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
	check(a, 56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
	check(a, 63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34");
	check(a, 64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
	check(a, 119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb");
	check(a, 120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c");
	free(a);
	printf("sha256: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
