#ifndef __XEN_ERRNO_H__
#define __XEN_ERRNO_H__

#define EPERM    1
#define ENOENT   2
#define ESRCH    3
#define E2BIG    7
#define ENOMEM  12
#define EFAULT  14
#define EBUSY   16
#define EEXIST  17
#define EINVAL  22
#define ENOSPC  28
#define ERANGE  34
#define EAGAIN  11
#define EOVERFLOW 75
#define ENOSYS  38
#define EOPNOTSUPP 95

#endif /* __XEN_ERRNO_H__ */
