/* agentsandbox-attack: tries escape techniques a compromised agent would use and prints one
 * line per technique: "<technique> <syscall> <outcome>", outcome being "ALLOWED" when the call
 * succeeded, the errno name when it failed, "MASKED" when a host file was replaced by an
 * empty device, or the signal ("SIGSYS") that killed the attempt. Every attempt is harmless
 * when it succeeds (nothing is loaded, written to the host, or left behind). Exit status 0 always: the outcome
 * is in the output. The last line is "done <unix-ns>", when the last attempt returned.
 * Usage: agentsandbox-attack [technique ...]      (default: all techniques)
 *        agentsandbox-attack flood N INTERVAL_US   N unshare(CLONE_NEWUSER) attempts, paced;
 *                                                  prints "flood N denied D" and then waits
 *        agentsandbox-attack paced N INTERVAL_MS   prints "attempt K <unix-ns>" before each
 *                                                  attempt, then waits
 *        agentsandbox-attack flood-threads T S     T threads of unshare(CLONE_NEWUSER) for S
 *                                                  seconds; prints the total attempts, waits
 *        agentsandbox-attack cost N                ns per call of a notified syscall
 *                                                  (unshare) vs an errno-only one (mbind)
 *        agentsandbox-attack udp-chat LPORT IP PORT S  for S seconds, from UDP port LPORT (IPv4 or
 *                                                  IPv6, as IP is), sends
 *                                                  "from-LPORT" to IP:PORT every 200 ms (send
 *                                                  errors ignored) and prints "got <payload>"
 *                                                  for every datagram received; then exits */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/filter.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sys/klog.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/time.h>
#include <stdint.h>
#include <pthread.h>
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
  case EAFNOSUPPORT: return "EAFNOSUPPORT";
  case EBUSY: return "EBUSY";
  case ENOPROTOOPT: return "ENOPROTOOPT";
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

static void report_outcome(const char *technique, const char *syscall_name, const char *outcome) {
  printf("%s %s %s\n", technique, syscall_name, outcome);
  fflush(stdout);
}

static void t_socket(const char *technique, int family, int type, int protocol) {
  long rc = socket(family, type, protocol);
  report(technique, "socket", rc);
  if (rc >= 0) close(rc);
}
static void t_vsock(void) { t_socket("socket-vsock-to-host", 40 /* AF_VSOCK */, SOCK_STREAM, 0); }
static void t_alg(void) { t_socket("socket-kernel-crypto-alg", 38 /* AF_ALG */, SOCK_SEQPACKET, 0); }
static void t_raw(void) { t_socket("raw-socket", AF_INET, SOCK_RAW, IPPROTO_ICMP); }
static void t_packet(void) { t_socket("packet-socket", 17 /* AF_PACKET */, SOCK_RAW, 0); }
static void t_firewall(void) {
  /* iptables' table replacement (IPT_SO_SET_REPLACE) on the pod's netns: a bogus, short
   * table that the kernel would reject after the permission check anyway. */
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  char table[64];
  memset(table, 0, sizeof table);
  report("firewall-flush", "setsockopt", setsockopt(fd, IPPROTO_IP, 64, table, sizeof table));
  close(fd);
}

/* Runs fn in a grandchild and reports how it ended: its errno (exit code), ALLOWED (exit 0)
 * or the signal that killed it. For calls that may kill the caller (wrong-ABI syscalls). */
static void in_grandchild(const char *technique, const char *syscall_name, int (*fn)(void)) {
  pid_t pid = fork();
  if (pid == 0) _exit(fn());
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) {
    report_outcome(technique, syscall_name, WTERMSIG(status) == SIGSYS ? "SIGSYS" : strsignal(WTERMSIG(status)));
  } else if (WEXITSTATUS(status) == 0) {
    report_outcome(technique, syscall_name, "ALLOWED");
  } else {
    report_outcome(technique, syscall_name, errname(WEXITSTATUS(status)));
  }
}
static int i386_getpid(void) {
#if defined(__x86_64__)
  long ret;
  /* The 32-bit ABI from 64-bit code: eax=20 is getpid on i386 (and not on x86_64). */
  __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory", "rcx", "r11");
  return ret < 0 ? (int)-ret : 0;
#else
  return ENOSYS;
#endif
}
static void t_int80(void) { in_grandchild("i386-int80-syscall", "int80", i386_getpid); }
static int x32_getpid(void) {
  long rc = syscall(0x40000000L | 39L);
  return rc < 0 ? errno : 0;
}
static void t_x32(void) { in_grandchild("x32-abi-syscall", "x32", x32_getpid); }
static void t_pidfd_getfd(void) {
  pid_t pid = sleeper();
  int pidfd = syscall(SYS_pidfd_open, pid, 0);
  long rc = syscall(SYS_pidfd_getfd, pidfd, 0, 0);
  report("steal-fd-pidfd-getfd", "pidfd_getfd", rc);
  if (rc >= 0) close(rc);
  close(pidfd);
  reap(pid);
}
/* A filter that allows everything: harmless if installed, and with a listener it would take
 * the runtime's place; with ERRNO actions it would silence the runtime's notifications. */
static struct sock_filter allow_all[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
static struct sock_fprog allow_prog = {1, allow_all};
static void t_listener(void) {
  long rc = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &allow_prog);
  report("seccomp-listener-hijack", "seccomp", rc);
  if (rc >= 0) close(rc);
}
static void t_stack_filter(void) {
  report("silence-tripwire-filter", "prctl", prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &allow_prog, 0, 0));
}
static void t_chroot(void) { report("chroot", "chroot", chroot("/tmp")); }
static void t_name_to_handle(void) {
  struct {
    unsigned int handle_bytes;
    int handle_type;
    unsigned char f_handle[128];
  } handle = {128, 0, {0}};
  int mount_id;
  report("name-to-handle", "name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &handle, &mount_id, 0));
}
static void t_vmsplice(void) {
  int fds[2];
  static char page[64] = "x";
  if (pipe(fds) != 0) return;
  struct iovec iov = {page, sizeof page};
  report("vmsplice-page-into-pipe", "vmsplice", syscall(SYS_vmsplice, fds[1], &iov, 1, 0));
  close(fds[0]);
  close(fds[1]);
}
static void t_personality(void) {
  report("personality-aslr-off", "personality", personality(ADDR_NO_RANDOMIZE));
}
static void t_syslog(void) {
  char buf[64];
  report("read-kernel-log", "syslog", klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, sizeof buf));
}
static void t_clone3(void) {
  struct clone_args args;
  memset(&args, 0, sizeof args);
  args.flags = CLONE_NEWUSER;
  args.exit_signal = SIGCHLD;
  long rc = syscall(SYS_clone3, &args, sizeof args);
  if (rc == 0) _exit(0);
  if (rc > 0) waitpid(rc, NULL, 0);
  report("clone3-new-user-ns", "clone3", rc);
}
/* A host file read or written through a path the runtime may have masked (an empty device
 * over it): MASKED, or what the kernel answered. Writes put back what was read (harmless). */
static int masked(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3);
}
static void t_kcore(void) {
  int fd = open("/proc/kcore", O_RDONLY);
  if (fd < 0) return report("read-kcore", "open", -1);
  char byte;
  if (masked(fd)) report_outcome("read-kcore", "read", "MASKED");
  else report("read-kcore", "read", read(fd, &byte, 1) > 0 ? 0 : -1);
  close(fd);
}
static void t_uevent_helper(void) {
  /* The kernel runs uevent_helper as host root on the next uevent. */
  char old[256] = "";
  int fd = open("/sys/kernel/uevent_helper", O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, old, sizeof old - 1);
    old[n > 0 ? n : 0] = 0;
    close(fd);
  }
  if (!old[0]) strcpy(old, "\n");
  fd = open("/sys/kernel/uevent_helper", O_WRONLY);
  if (fd < 0) return report("write-uevent-helper", "open", -1);
  if (masked(fd)) report_outcome("write-uevent-helper", "write", "MASKED");
  else report("write-uevent-helper", "write", write(fd, old, strlen(old)));
  close(fd);
}
static void t_sys_submount(void) {
  /* Every mount at or below /sys must be read-only (tracefs, bpffs, configfs, ... too). */
  FILE *f = fopen("/proc/self/mountinfo", "r");
  char line[1024], where[512], options[512];
  const char *outcome = "EROFS";
  while (f && fgets(line, sizeof line, f)) {
    if (sscanf(line, "%*s %*s %*s %*s %511s %511s", where, options) != 2) continue;
    if (strncmp(where, "/sys", 4) != 0 || (where[4] != 0 && where[4] != '/')) continue;
    if (strncmp(options, "ro", 2) != 0 || (options[2] != 0 && options[2] != ',')) {
      outcome = "ALLOWED";
      fprintf(stderr, "writable: %s %s\n", where, options);
    }
  }
  if (f) fclose(f);
  report_outcome("writable-sys-submount", "mountinfo", outcome);
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
    {"socket-vsock-to-host", t_vsock},
    {"socket-kernel-crypto-alg", t_alg},
    {"raw-socket", t_raw},
    {"packet-socket", t_packet},
    {"firewall-flush", t_firewall},
    {"i386-int80-syscall", t_int80},
    {"x32-abi-syscall", t_x32},
    {"steal-fd-pidfd-getfd", t_pidfd_getfd},
    {"seccomp-listener-hijack", t_listener},
    {"silence-tripwire-filter", t_stack_filter},
    {"chroot", t_chroot},
    {"name-to-handle", t_name_to_handle},
    {"vmsplice-page-into-pipe", t_vmsplice},
    {"personality-aslr-off", t_personality},
    {"read-kernel-log", t_syslog},
    {"clone3-new-user-ns", t_clone3},
    {"read-kcore", t_kcore},
    {"write-uevent-helper", t_uevent_helper},
    {"writable-sys-submount", t_sys_submount},
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

/* flood-threads: THREADS threads looping on a denied, notified call for SECONDS (each thread
 * also stops after FLOOD_MAX_PER_THREAD attempts). */
#define FLOOD_MAX_PER_THREAD 20000000L
static long long flood_deadline;
static void *flood_thread(void *counter) {
  long n = 0;
  while (n < FLOOD_MAX_PER_THREAD && mono_ns() < flood_deadline) {
    unshare(CLONE_NEWUSER);
    n++;
  }
  *(long *)counter = n;
  return NULL;
}
static int flood_threads(long threads, long seconds) {
  if (threads < 1 || threads > 1024 || seconds < 1 || seconds > 600) return 2;
  pthread_t *ids = calloc(threads, sizeof *ids);
  long *counts = calloc(threads, sizeof *counts);
  flood_deadline = mono_ns() + seconds * 1000000000LL;
  long started = 0;
  for (long i = 0; i < threads; i++)
    if (pthread_create(&ids[i], NULL, flood_thread, &counts[i]) == 0) started++;
    else break;
  long total = 0;
  for (long i = 0; i < started; i++) {
    pthread_join(ids[i], NULL);
    total += counts[i];
  }
  printf("flood-threads threads %ld seconds %ld attempts %ld\n", started, seconds, total);
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
  for (long i = 0; i < count; i++) syscall(SYS_mbind, 0, 0, 0, 0, 0, 0);
  long long errno_only = mono_ns() - start;
  printf("cost calls %ld notified_ns %lld errno_ns %lld\n", count, notified / count, errno_only / count);
  printf("done %lld\n", now_ns());
  wait_forever();
  return 0;
}

/* udp-chat: both ends of a UDP exchange on fixed ports, to tell whether a datagram sent in
 * opens a way back out (conntrack ESTABLISHED). */
static int udp_chat(int local_port, const char *ip, int port, long seconds) {
  /* IPv4 or IPv6, by the address given. */
  int v6 = strchr(ip, ':') != NULL;
  int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_storage local = {0}, peer = {0};
  socklen_t len;
  int parsed;
  if (v6) {
    struct sockaddr_in6 *l = (struct sockaddr_in6 *)&local, *p = (struct sockaddr_in6 *)&peer;
    l->sin6_family = p->sin6_family = AF_INET6;
    l->sin6_port = htons(local_port);
    p->sin6_port = htons(port);
    parsed = inet_pton(AF_INET6, ip, &p->sin6_addr);
    len = sizeof(struct sockaddr_in6);
  } else {
    struct sockaddr_in *l = (struct sockaddr_in *)&local, *p = (struct sockaddr_in *)&peer;
    l->sin_family = p->sin_family = AF_INET;
    l->sin_port = htons(local_port);
    p->sin_port = htons(port);
    parsed = inet_pton(AF_INET, ip, &p->sin_addr);
    len = sizeof(struct sockaddr_in);
  }
  if (fd < 0 || parsed != 1 || bind(fd, (struct sockaddr *)&local, len) != 0) {
    printf("udp-chat setup %s\n", strerror(errno));
    return 1;
  }
  struct timeval wait = {.tv_sec = 0, .tv_usec = 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
  char message[32], buf[128];
  snprintf(message, sizeof message, "from-%d", local_port);
  long long end = mono_ns() + seconds * 1000000000LL, next_send = 0;
  int printed = 0;
  while (mono_ns() < end) {
    if (mono_ns() >= next_send) {
      sendto(fd, message, strlen(message), 0, (struct sockaddr *)&peer, len);
      next_send = mono_ns() + 200000000LL;
    }
    ssize_t got = recv(fd, buf, sizeof buf - 1, 0);
    if (got > 0 && printed < 10) {
      buf[got] = 0;
      printf("got %s\n", buf);
      printed++;
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  size_t n = sizeof techniques / sizeof techniques[0];
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 4 && strcmp(argv[1], "flood") == 0) return flood(atol(argv[2]), atol(argv[3]));
  if (argc == 4 && strcmp(argv[1], "paced") == 0) return paced(atol(argv[2]), atol(argv[3]));
  if (argc == 3 && strcmp(argv[1], "cost") == 0) return cost(atol(argv[2]));
  if (argc == 4 && strcmp(argv[1], "flood-threads") == 0) return flood_threads(atol(argv[2]), atol(argv[3]));
  if (argc == 6 && strcmp(argv[1], "udp-chat") == 0)
    return udp_chat(atoi(argv[2]), argv[3], atoi(argv[4]), atol(argv[5]));
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
