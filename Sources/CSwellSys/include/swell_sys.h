// Linux calls that Swift's Glibc module does not import: project IDs (FS_IOC_FSGETXATTR and
// FS_IOC_FSSETXATTR), project quotas (quotactl), and syncfs. Each returns 0, or -errno on failure.
#ifndef SWELL_SYS_H
#define SWELL_SYS_H

#include <stdint.h>

/// A directory's project ID and whether new entries inherit it (FS_XFLAG_PROJINHERIT).
int swell_project_get(int fd, uint32_t *project, int *inherit);
/// Sets a directory's project ID and the inherit flag, keeping its other flags.
int swell_project_set(int fd, uint32_t project);

/// A project's hard byte limit (0: none) and the bytes and inodes it uses, on the filesystem
/// whose block device is `device`.
int swell_quota_get(const char *device, uint32_t project, uint64_t *limit_bytes, uint64_t *used_bytes,
                    uint64_t *used_inodes, uint64_t *limit_inodes);
/// Sets a project's hard byte and inode limits (0 removes one) and clears its soft limits.
int swell_quota_set(const char *device, uint32_t project, uint64_t limit_bytes, uint64_t limit_inodes);
/// Whether project quotas are accounted (bit 0) and enforced (bit 1) on that filesystem.
int swell_quota_project_state(const char *device, int *state);

/// Flushes the filesystem that holds the open file `fd` (syncfs).
int swell_syncfs(int fd);

#endif
