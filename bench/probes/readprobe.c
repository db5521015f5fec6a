// Session 11's read-floor probe (bench/results/scan-h100.md): T threads take files from a list
// (64 at a time) and read each whole into a private 8 MiB buffer (moving on, like packs), with
// system calls. Modes: 0 open+fstat+read+close, 1 open+fstat+close (no read), 2 as 0 but
// openat() from the file's directory, 3 as 0 without fstat (reads until EOF), 4 = 2 and 3.
//   gcc -O2 -pthread bench/probes/readprobe.c -o /tmp/readprobe
//   find /tmp/vyre-corpus -type f > /tmp/list; /tmp/readprobe /tmp/list 0 1 4 8 16
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static char **paths; static size_t n; static atomic_size_t next; static int mode; static size_t chunk = 64;
static atomic_ullong total;
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void *work(void *arg){
  int dfd=-1; size_t dlen=0; char dname[4096]; size_t cap = 8u<<20; char *buf = aligned_alloc(4096, cap); memset(buf,0,cap); size_t at=0; unsigned long long got=0;
  for(;;){ size_t i = atomic_fetch_add(&next, chunk); if(i>=n) break; size_t e=i+chunk<n?i+chunk:n;
    for(;i<e;i++){ int fd;
      if(mode>=2){ char *sl=strrchr(paths[i],'/'); size_t dl=sl-paths[i];
        if(dl!=dlen || memcmp(dname,paths[i],dl)){ if(dfd>=0) close(dfd); memcpy(dname,paths[i],dl); dname[dl]=0; dlen=dl; dfd=open(dname,O_PATH|O_DIRECTORY|O_CLOEXEC);}
        fd=openat(dfd,sl+1,O_RDONLY|O_CLOEXEC);} else fd=open(paths[i],O_RDONLY|O_CLOEXEC);
      if(fd<0) continue;
      struct stat st; size_t want;
      if(mode==3||mode==4){ want=1<<20; } else { fstat(fd,&st); want=st.st_size+1; }
      if(mode!=1){ if(want>cap) want=cap; if(at+want>cap) at=0; ssize_t r; size_t sz=0;
        while((r=read(fd,buf+at+sz,want-sz))>0){ got+=r; sz+=r; if(mode!=3&&mode!=4&&sz<want) break; if(sz==want) break; }
        at+= (sz+63)&~63ul; if(at>=cap) at=0; }
      close(fd);} }
  if(dfd>=0) close(dfd);
  atomic_fetch_add(&total,got); free(buf); return 0;}
int main(int c,char**v){ FILE*f=fopen(v[1],"r"); mode=atoi(v[2]); size_t capn=1<<20; paths=malloc(capn*sizeof(char*)); char line[4096];
  while(fgets(line,sizeof line,f)){ line[strcspn(line,"\n")]=0; if(n==capn){capn*=2;paths=realloc(paths,capn*sizeof(char*));} paths[n++]=strdup(line);} 
  for(int a=3;a<c;a++){ int T=atoi(v[a]); for(int rep=0;rep<3;rep++){ atomic_store(&next,0); atomic_store(&total,0);
    struct rusage r0,r1; getrusage(RUSAGE_SELF,&r0); double t0=now(); pthread_t th[64]; for(int t=0;t<T;t++) pthread_create(&th[t],0,work,0); for(int t=0;t<T;t++) pthread_join(th[t],0);
    double dt=now()-t0; getrusage(RUSAGE_SELF,&r1);
    double us=(r1.ru_utime.tv_sec-r0.ru_utime.tv_sec)+(r1.ru_utime.tv_usec-r0.ru_utime.tv_usec)*1e-6, sy=(r1.ru_stime.tv_sec-r0.ru_stime.tv_sec)+(r1.ru_stime.tv_usec-r0.ru_stime.tv_usec)*1e-6;
    printf("mode %s threads %2d rep %d: %.4f s, %.2f GB, %.2f GB/s, user %.3f sys %.3f s\n", (const char*[]){"read","meta","openat","nofstat","openat+nofstat"}[mode], T, rep, dt, atomic_load(&total)/1e9, atomic_load(&total)/1e9/dt, us, sy); fflush(stdout);} }
  return 0;}
