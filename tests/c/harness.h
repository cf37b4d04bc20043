/* A minimal test harness for the lbmkv C tests: each test is a void function;
 * a failed check prints where and why, marks the test failed and returns. */
#ifndef LBMKV_TEST_HARNESS_H
#define LBMKV_TEST_HARNESS_H

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <lbmkv.h>

static int harness_failed;
static int harness_passed_count;
static int harness_failed_count;

#define FAIL_AT(...)                                                     \
  do {                                                                   \
    fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);                    \
    fprintf(stderr, __VA_ARGS__);                                        \
    fprintf(stderr, "\n");                                               \
    harness_failed = 1;                                                  \
  } while (0)

/* Checks a condition; on failure the current test returns. */
#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      FAIL_AT("check failed: %s", #cond);                                \
      return;                                                            \
    }                                                                    \
  } while (0)

/* Calls fn(args..., &err) and requires LBMKV_STATUS_OK. */
#define OK(fn, ...)                                                      \
  do {                                                                   \
    lbmkv_error *ok_err_ = NULL;                                         \
    lbmkv_status ok_st_ = fn(__VA_ARGS__, &ok_err_);                     \
    if (ok_st_ != LBMKV_STATUS_OK) {                                     \
      FAIL_AT("%s returned %s: %s", #fn, lbmkv_status_name(ok_st_),      \
              lbmkv_error_message(ok_err_));                             \
      lbmkv_error_free(ok_err_);                                         \
      return;                                                            \
    }                                                                    \
    if (ok_err_ != NULL) {                                               \
      FAIL_AT("%s succeeded but wrote err_out", #fn);                    \
      return;                                                            \
    }                                                                    \
  } while (0)

/* Calls fn(args..., &err) and requires status `want`, with an error object of
 * the same status and a non-empty message; then calls it again with a NULL
 * err_out, which must give the same status. */
#define FAILS(want, fn, ...)                                             \
  do {                                                                   \
    lbmkv_error *f_err_ = NULL;                                          \
    lbmkv_status f_st_ = fn(__VA_ARGS__, &f_err_);                       \
    if (f_st_ != (want)) {                                               \
      FAIL_AT("%s returned %s, expected %s (%s)", #fn,                   \
              lbmkv_status_name(f_st_), lbmkv_status_name(want),         \
              lbmkv_error_message(f_err_));                              \
      lbmkv_error_free(f_err_);                                          \
      return;                                                            \
    }                                                                    \
    if (f_err_ == NULL || lbmkv_error_status(f_err_) != (want) ||        \
        lbmkv_error_message(f_err_)[0] == '\0') {                        \
      FAIL_AT("%s: missing or wrong error object", #fn);                 \
      lbmkv_error_free(f_err_);                                          \
      return;                                                            \
    }                                                                    \
    lbmkv_error_free(f_err_);                                            \
    f_st_ = fn(__VA_ARGS__, NULL);                                       \
    if (f_st_ != (want)) {                                               \
      FAIL_AT("%s with NULL err_out returned %s", #fn,                   \
              lbmkv_status_name(f_st_));                                 \
      return;                                                            \
    }                                                                    \
  } while (0)

#define RUN(test)                                                        \
  do {                                                                   \
    harness_failed = 0;                                                  \
    fprintf(stderr, "%s ...\n", #test);                                  \
    test();                                                              \
    if (harness_failed) {                                                \
      harness_failed_count++;                                            \
      fprintf(stderr, "%s FAILED\n", #test);                             \
    } else {                                                             \
      harness_passed_count++;                                            \
      fprintf(stderr, "%s ok\n", #test);                                 \
    }                                                                    \
  } while (0)

/* Prints the summary line and returns the exit status. */
static int harness_summary(void) {
  printf("%d passed, %d failed\n", harness_passed_count, harness_failed_count);
  return harness_failed_count == 0 ? 0 : 1;
}

/* A slice over a string literal (without its NUL). */
#define S(lit) ((lbmkv_slice){(const uint8_t *)(lit), sizeof(lit) - 1})

/* Whether a slice or bytes equal a NUL-terminated string. */
static int slice_is(lbmkv_slice s, const char *want) {
  size_t n = strlen(want);
  return s.len == n && (n == 0 || memcmp(s.data, want, n) == 0);
}

static int bytes_is(lbmkv_bytes b, const char *want) {
  lbmkv_slice s;
  s.data = b.data;
  s.len = b.len;
  return b.data != NULL && slice_is(s, want);
}

static void sleep_ms(long ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  nanosleep(&ts, NULL);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* Polls `cond(arg)` every 10 ms for at most `limit_ms`. */
static int wait_until(int (*cond)(void *), void *arg, long limit_ms) {
  double deadline = now_ms() + (double)limit_ms;
  while (!cond(arg)) {
    if (now_ms() > deadline) return 0;
    sleep_ms(10);
  }
  return 1;
}

#endif
