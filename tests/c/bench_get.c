/* Cost of a local lbmkv_table_get from C: 1,000,000 calls over 10,000 keys of
 * 16 bytes with 100-byte values, each copying the value out and freeing it
 * (as the Rust bench `cargo bench -p lbmkv --bench local` does). */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <lbmkv.h>

#define KEYS 10000
#define CALLS 1000000
#define BATCH 1000

static char keys[KEYS][17];

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int fail(const char *what, lbmkv_status st, lbmkv_error *err) {
  fprintf(stderr, "%s: %s: %s\n", what, lbmkv_status_name(st), lbmkv_error_message(err));
  lbmkv_error_free(err);
  return 1;
}

int main(void) {
  lbmkv_config *cfg = lbmkv_config_new();
  lbmkv_node *node = NULL;
  lbmkv_table *t = NULL;
  lbmkv_error *err = NULL;
  lbmkv_status st;
  uint8_t value[100];
  lbmkv_slice ks[BATCH], vs[BATCH];
  size_t found_count = 0;
  double start, elapsed;
  int i, j;
  memset(value, 7, sizeof value);
  for (i = 0; i < KEYS; i++) sprintf(keys[i], "key-%012d", i);
  lbmkv_config_set_name(cfg, "bench-c", NULL);
  lbmkv_config_set_cookie(cfg, (lbmkv_slice){(const uint8_t *)"bench", 5}, NULL);
  st = lbmkv_node_start(cfg, &node, &err);
  lbmkv_config_free(cfg);
  if (st != LBMKV_STATUS_OK) return fail("start", st, err);
  st = lbmkv_table_create(node, "bench", NULL, NULL, NULL, &t, &err);
  if (st != LBMKV_STATUS_OK) return fail("create", st, err);
  for (i = 0; i < KEYS; i += BATCH) {
    for (j = 0; j < BATCH; j++) {
      ks[j].data = (const uint8_t *)keys[i + j];
      ks[j].len = 16;
      vs[j].data = value;
      vs[j].len = sizeof value;
    }
    st = lbmkv_table_put_many(t, ks, vs, BATCH, NULL, &err);
    if (st != LBMKV_STATUS_OK) return fail("put_many", st, err);
  }
  for (i = 0; i < 100000; i++) { /* warm-up */
    lbmkv_bytes v;
    bool found;
    lbmkv_slice k = {(const uint8_t *)keys[i % KEYS], 16};
    lbmkv_table_get(t, k, false, &v, &found, NULL);
    lbmkv_bytes_free(&v);
  }
  start = now_ns();
  for (i = 0; i < CALLS; i++) {
    lbmkv_bytes v;
    bool found = false;
    lbmkv_slice k = {(const uint8_t *)keys[i % KEYS], 16};
    st = lbmkv_table_get(t, k, false, &v, &found, NULL);
    if (st != LBMKV_STATUS_OK) return fail("get", st, NULL);
    found_count += found && v.len == sizeof value;
    lbmkv_bytes_free(&v);
  }
  elapsed = now_ns() - start;
  if (found_count != CALLS) {
    fprintf(stderr, "only %zu of %d gets found the value\n", found_count, CALLS);
    return 1;
  }
  printf("C lbmkv_table_get (local, 16-byte key, 100-byte value): %.1f ns/call, %.2fM ops/s "
         "(%d calls)\n",
         elapsed / CALLS, CALLS / elapsed * 1e3, CALLS);
  lbmkv_table_free(t);
  lbmkv_node_free(node);
  return 0;
}
