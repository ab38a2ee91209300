/* agentsandbox-attack: tries escape techniques a compromised agent would use and prints one
 * line per technique: "<technique> <syscall> <outcome>", outcome being "ALLOWED" when the call
 * succeeded or the errno name when it failed. Every attempt is harmless when it succeeds
 * (nothing is loaded, written to the host, or left behind). Exit status 0 always: the outcome
 * is in the output. The last line is "done <unix-ns>", when the last attempt returned.
 * Usage: agentsandbox-attack [technique ...]      (default: all techniques)
 *        agentsandbox-attack flood N INTERVAL_US   N unshare(CLONE_NEWUSER) attempts, paced;
 *                                                  prints "flood N denied D" and then waits
 *        agentsandbox-attack paced N INTERVAL_MS   prints "attempt K <unix-ns>" before each
 *                                                  attempt, then waits
 *        agentsandbox-attack cost N                ns per call of a notified syscall
 *                                                  (unshare) vs an errno-only one (acct) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *errname(int e) {
  switch (e) {
  case EPERM: return "EPERM";
  case EACCES: return "EACCES";
  case ENOSYS: return "ENOSYS";
  case EINVAL: return "EINVAL";
  case ENOENT: return "ENOENT";
  case EROFS: return "EROFS";
  case EBADF: return "EBADF";
  case ETXTBSY: return "ETXTBSY";
  case EFAULT: return "EFAULT";
  case ENOTDIR: return "ENOTDIR";
  case ESRCH: return "ESRCH";
  case EOPNOTSUPP: return "EOPNOTSUPP";
  default: {
    static char buf[32];
    snprintf(buf, sizeof buf, "errno%d", e);
    return buf;
  }
  }
}

static void report(const char *technique, const char *syscall_name, long rc) {
  printf("%s %s %s\n", technique, syscall_name, rc >= 0 ? "ALLOWED" : errname(errno));
  fflush(stdout);
}

/* A child that just waits, to be the target of ptrace-class calls. */
static pid_t sleeper(void) {
  pid_t pid = fork();
  if (pid == 0) {
    pause();
    _exit(0);
  }
  return pid;
}

static void reap(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

static void t_mount(void) {
  mkdir("/tmp/asb-mnt", 0700);
  long rc = mount("none", "/tmp/asb-mnt", "tmpfs", 0, NULL);
  report("mount-tmpfs", "mount", rc);
  if (rc == 0) umount("/tmp/asb-mnt");
}
static void t_unshare_user(void) { report("unshare-user-ns", "unshare", unshare(CLONE_NEWUSER)); }
static void t_unshare_mount(void) { report("unshare-mount-ns", "unshare", unshare(CLONE_NEWNS)); }
static void t_setns(void) {
  int fd = open("/proc/self/ns/mnt", O_RDONLY);
  report("setns-mount-ns", "setns", setns(fd, 0));
  close(fd);
}
static void t_clone_ns(void) {
  long rc = syscall(SYS_clone, CLONE_NEWUTS | SIGCHLD, 0, 0, 0, 0);
  if (rc == 0) _exit(0);
  if (rc > 0) waitpid(rc, NULL, 0);
  report("clone-new-uts-ns", "clone", rc);
}
static void t_ptrace(void) {
  pid_t pid = sleeper();
  long rc = ptrace(PTRACE_ATTACH, pid, 0, 0);
  report("ptrace-attach", "ptrace", rc);
  reap(pid);
}
static void t_process_vm_readv(void) {
  pid_t pid = sleeper();
  char buf[8];
  static char src[8] = "secret";
  struct iovec local = {buf, sizeof buf}, remote = {src, sizeof src};
  report("read-other-process-memory", "process_vm_readv", process_vm_readv(pid, &local, 1, &remote, 1, 0));
  reap(pid);
}
static void t_bpf(void) {
  union bpf_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.map_type = BPF_MAP_TYPE_ARRAY;
  attr.key_size = 4;
  attr.value_size = 4;
  attr.max_entries = 1;
  long rc = syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
  report("bpf-map-create", "bpf", rc);
  if (rc >= 0) close(rc);
}
static void t_keyctl(void) {
  report("keyring-read", "keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
}
static void t_add_key(void) {
  report("keyring-add", "add_key", syscall(SYS_add_key, "user", "asb", "x", 1, KEY_SPEC_PROCESS_KEYRING));
}
static void t_io_uring(void) {
  struct io_uring_params params;
  memset(&params, 0, sizeof params);
  long rc = syscall(SYS_io_uring_setup, 1, &params);
  report("io-uring-setup", "io_uring_setup", rc);
  if (rc >= 0) close(rc);
}
static void t_init_module(void) {
  report("load-kernel-module", "init_module", syscall(SYS_init_module, NULL, 0, ""));
}
static void t_finit_module(void) {
  int fd = open("/dev/null", O_RDONLY);
  report("load-kernel-module-fd", "finit_module", syscall(SYS_finit_module, fd, "", 0));
  close(fd);
}
static void t_open_by_handle_at(void) {
  /* The "shocker" exploit: open a host file by its inode handle. */
  struct {
    unsigned int handle_bytes;
    int handle_type;
    unsigned char f_handle[8];
  } handle = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
  long rc = syscall(SYS_open_by_handle_at, AT_FDCWD, &handle, O_RDONLY);
  report("open-by-handle-shocker", "open_by_handle_at", rc);
  if (rc >= 0) close(rc);
}
static void t_perf_event_open(void) {
  struct perf_event_attr attr;
  memset(&attr, 0, sizeof attr);
  attr.type = PERF_TYPE_SOFTWARE;
  attr.size = sizeof attr;
  attr.config = PERF_COUNT_SW_CPU_CLOCK;
  attr.exclude_kernel = 1;
  long rc = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
  report("perf-event-open", "perf_event_open", rc);
  if (rc >= 0) close(rc);
}
static void t_userfaultfd(void) {
  long rc = syscall(SYS_userfaultfd, O_CLOEXEC);
  report("userfaultfd", "userfaultfd", rc);
  if (rc >= 0) close(rc);
}
static void t_kexec(void) { report("kexec-load", "kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0)); }
static void t_pivot_root(void) { report("pivot-root", "pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp")); }
static void t_fsopen(void) {
  long rc = syscall(SYS_fsopen, "tmpfs", 0);
  report("new-mount-api", "fsopen", rc);
  if (rc >= 0) close(rc);
}
static void t_sysrq(void) {
  long rc = open("/proc/sysrq-trigger", O_WRONLY);
  report("write-sysrq-trigger", "open", rc);
  if (rc >= 0) close(rc);
}
static void t_proc_self_exe(void) {
  /* CVE-2019-5736: overwrite the runtime binary through /proc/self/exe. */
  long rc = open("/proc/self/exe", O_WRONLY);
  report("overwrite-proc-self-exe", "open", rc);
  if (rc >= 0) close(rc);
}

struct technique {
  const char *name;
  void (*run)(void);
};
static const struct technique techniques[] = {
    {"mount-tmpfs", t_mount},
    {"unshare-user-ns", t_unshare_user},
    {"unshare-mount-ns", t_unshare_mount},
    {"setns-mount-ns", t_setns},
    {"clone-new-uts-ns", t_clone_ns},
    {"ptrace-attach", t_ptrace},
    {"read-other-process-memory", t_process_vm_readv},
    {"bpf-map-create", t_bpf},
    {"keyring-read", t_keyctl},
    {"keyring-add", t_add_key},
    {"io-uring-setup", t_io_uring},
    {"load-kernel-module", t_init_module},
    {"load-kernel-module-fd", t_finit_module},
    {"open-by-handle-shocker", t_open_by_handle_at},
    {"perf-event-open", t_perf_event_open},
    {"userfaultfd", t_userfaultfd},
    {"kexec-load", t_kexec},
    {"pivot-root", t_pivot_root},
    {"new-mount-api", t_fsopen},
    {"write-sysrq-trigger", t_sysrq},
    {"overwrite-proc-self-exe", t_proc_self_exe},
};

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void wait_forever(void) {
  fflush(stdout);
  for (;;) pause();
}

static int flood(long count, long interval_us) {
  long denied = 0;
  for (long i = 0; i < count; i++) {
    if (unshare(CLONE_NEWUSER) < 0 && errno == EPERM) denied++;
    if (interval_us > 0) usleep(interval_us);
  }
  printf("flood %ld denied %ld\n", count, denied);
  printf("done %lld\n", now_ns());
  wait_forever();
  return 0;
}

static int paced(long count, long interval_ms) {
  for (long i = 1; i <= count; i++) {
    printf("attempt %ld %lld\n", i, now_ns());
    fflush(stdout);
    unshare(CLONE_NEWUSER);
    usleep(interval_ms * 1000);
  }
  printf("done %lld\n", now_ns());
  wait_forever();
  return 0;
}

static int cost(long count) {
  long long start = mono_ns();
  for (long i = 0; i < count; i++) unshare(CLONE_NEWUSER);
  long long notified = mono_ns() - start;
  start = mono_ns();
  for (long i = 0; i < count; i++) syscall(SYS_acct, NULL);
  long long errno_only = mono_ns() - start;
  printf("cost calls %ld notified_ns %lld errno_ns %lld\n", count, notified / count, errno_only / count);
  printf("done %lld\n", now_ns());
  wait_forever();
  return 0;
}

int main(int argc, char **argv) {
  size_t n = sizeof techniques / sizeof techniques[0];
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 4 && strcmp(argv[1], "flood") == 0) return flood(atol(argv[2]), atol(argv[3]));
  if (argc == 4 && strcmp(argv[1], "paced") == 0) return paced(atol(argv[2]), atol(argv[3]));
  if (argc == 3 && strcmp(argv[1], "cost") == 0) return cost(atol(argv[2]));
  for (size_t i = 0; i < n; i++) {
    int wanted = argc < 2;
    for (int a = 1; a < argc; a++)
      if (strcmp(argv[a], techniques[i].name) == 0) wanted = 1;
    if (!wanted) continue;
    /* Each attempt in its own child: one that succeeds (a new namespace) cannot change the
     * conditions of the next. */
    pid_t pid = fork();
    if (pid == 0) {
      techniques[i].run();
      _exit(0);
    }
    waitpid(pid, NULL, 0);
  }
  printf("done %lld\n", now_ns());
  return 0;
}
