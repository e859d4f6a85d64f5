#define _GNU_SOURCE
#include "swell_sys.h"

#include <errno.h>
#include <linux/dqblk_xfs.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/quota.h>
#include <unistd.h>

int swell_project_get(int fd, uint32_t *project, int *inherit) {
  struct fsxattr attr;
  if (ioctl(fd, FS_IOC_FSGETXATTR, &attr) != 0) return -errno;
  *project = attr.fsx_projid;
  *inherit = (attr.fsx_xflags & FS_XFLAG_PROJINHERIT) != 0;
  return 0;
}

int swell_project_set(int fd, uint32_t project) {
  struct fsxattr attr;
  if (ioctl(fd, FS_IOC_FSGETXATTR, &attr) != 0) return -errno;
  attr.fsx_projid = project;
  attr.fsx_xflags |= FS_XFLAG_PROJINHERIT;
  if (ioctl(fd, FS_IOC_FSSETXATTR, &attr) != 0) return -errno;
  return 0;
}

int swell_quota_get(const char *device, uint32_t project, uint64_t *limit_bytes, uint64_t *used_bytes,
                    uint64_t *used_inodes, uint64_t *limit_inodes) {
  struct dqblk q;
  memset(&q, 0, sizeof q);
  if (quotactl(QCMD(Q_GETQUOTA, PRJQUOTA), device, (int)project, (caddr_t)&q) != 0) return -errno;
  *limit_bytes = q.dqb_bhardlimit * QIF_DQBLKSIZE;
  *used_bytes = q.dqb_curspace;
  *used_inodes = q.dqb_curinodes;
  *limit_inodes = q.dqb_ihardlimit;
  return 0;
}

int swell_quota_set(const char *device, uint32_t project, uint64_t limit_bytes, uint64_t limit_inodes) {
  struct dqblk q;
  memset(&q, 0, sizeof q);
  q.dqb_bhardlimit = limit_bytes / QIF_DQBLKSIZE;
  q.dqb_bsoftlimit = 0;
  q.dqb_ihardlimit = limit_inodes;
  q.dqb_isoftlimit = 0;
  q.dqb_valid = QIF_LIMITS;
  if (quotactl(QCMD(Q_SETQUOTA, PRJQUOTA), device, (int)project, (caddr_t)&q) != 0) return -errno;
  return 0;
}

int swell_quota_project_state(const char *device, int *state) {
  struct fs_quota_stat stat;
  memset(&stat, 0, sizeof stat);
  if (quotactl(QCMD(Q_XGETQSTAT, PRJQUOTA), device, 0, (caddr_t)&stat) != 0) return -errno;
  *state = ((stat.qs_flags & FS_QUOTA_PDQ_ACCT) ? 1 : 0) | ((stat.qs_flags & FS_QUOTA_PDQ_ENFD) ? 2 : 0);
  return 0;
}

int swell_syncfs(int fd) { return syncfs(fd) == 0 ? 0 : -errno; }
