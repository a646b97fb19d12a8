/* A qmail-queue that keeps nothing, for bench/tcpserver.sh: it reads the
   message on fd 0 and the envelope on fd 1 to their ends and exits 0, as
   the discard plugin and qpsmtpd's queue_discard answer 250 and keep
   nothing. */
#include <unistd.h>

static void drain(int fd) {
  char buf[8192];
  while (read(fd, buf, sizeof buf) > 0) {}
}

int main(void) {
  drain(0);
  drain(1);
  return 0;
}
