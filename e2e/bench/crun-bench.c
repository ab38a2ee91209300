/* crun-bench: Debian 12's crun (1.8.1) as a `make bench` peer. It refuses a config.json whose
 * ociVersion is not 1.0.x ("unknown version specified"), and containerd 2.x writes 1.3.0: on
 * `create`, the bundle's "ociVersion":"1.N. becomes "1.0. in place (one byte, same length).
 * Nothing else changes: then it execs /usr/bin/crun with the same arguments. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void patch(const char *bundle) {
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", bundle);
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return;
  char head[64];
  ssize_t n = pread(fd, head, sizeof head - 1, 0);
  if (n > 0) {
    head[n] = 0;
    const char *key = "\"ociVersion\":\"1.";
    char *at = strstr(head, key);
    if (at) {
      off_t off = (at - head) + (off_t)strlen(key);
      if (head[off] != '0') pwrite(fd, "0", 1, off);
    }
  }
  close(fd);
}

int main(int argc, char **argv) {
  int create = 0;
  const char *bundle = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "create") == 0) create = 1;
    if ((strcmp(argv[i], "--bundle") == 0 || strcmp(argv[i], "-b") == 0) && i + 1 < argc)
      bundle = argv[i + 1];
  }
  if (create && bundle) patch(bundle);
  argv[0] = "/usr/bin/crun";
  execv("/usr/bin/crun", argv);
  perror("crun-bench: exec /usr/bin/crun");
  return 127;
}
