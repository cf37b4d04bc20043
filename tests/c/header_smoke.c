/* Compiles the installed header alone, as C99 and as C++ (make test-c builds
 * this file both ways with every warning an error), and links one call. */
#include <lbmkv.h>

static bool on_conflict(void *user_data, const lbmkv_conflict *conflict,
                        lbmkv_resolution *resolution) {
  (void)user_data;
  return lbmkv_resolution_set_value(resolution, lbmkv_conflict_key(conflict), NULL) ==
         LBMKV_STATUS_OK;
}

static bool on_update(void *user_data, lbmkv_slice key, const lbmkv_slice *value,
                      lbmkv_update *update) {
  (void)user_data;
  (void)value;
  return lbmkv_update_set(update, key, NULL) == LBMKV_STATUS_OK;
}

int main(void) {
  lbmkv_conflict_fn c = on_conflict;
  lbmkv_update_fn u = on_update;
  lbmkv_free_fn f = 0;
  lbmkv_status st = LBMKV_STATUS_OK;
  lbmkv_event_type et = LBMKV_EVENT_TYPE_MERGED;
  lbmkv_bytes b = {0, 0};
  lbmkv_slice s = {0, 0};
  const char *v = LBMKV_VERSION;
  (void)c;
  (void)u;
  (void)f;
  (void)et;
  (void)s;
  (void)v;
  lbmkv_bytes_free(&b);
  return (int)st + (LBMKV_VERSION_NUMBER >= 0 ? 0 : 1) + (lbmkv_version() == 0);
}
