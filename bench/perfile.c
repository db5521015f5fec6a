// Per-file system CPU of open/fstat/read/close in a minimal synchronous loop (for
// bench/results/ingest-cpu.md). gcc -O2 -o /tmp/perfile bench/perfile.c
// Usage: perfile DIR MODE, MODE: s = fstatat by name, o = open + close, of = open + fstat +
// close, ofr = open + fstat + pread(LEN bytes, O_DIRECT) + close. Cold: sync; echo 3 >
// /proc/sys/vm/drop_caches first.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <time.h>
// usage: perfile DIR MODE  (MODE: s=stat path, o=open+close, of=open+fstat+close, ofr=open+fstat+read+close)
static double tv(struct timeval t){return t.tv_sec+t.tv_usec/1e6;}
int main(int argc,char**argv){
  const char*dir=argv[1]; const char*mode=argv[2];
  int dfd=open(dir,O_RDONLY|O_DIRECTORY);
  DIR*d=fdopendir(dup(dfd)); struct dirent*e; char (*names)[64]=malloc(20000*64); int n=0;
  while((e=readdir(d))){ if(e->d_name[0]=='.')continue; strcpy(names[n++],e->d_name);} 
  void*buf=NULL; posix_memalign(&buf,4096,1<<20);
  struct rusage r0,r1; struct timespec t0,t1; getrusage(RUSAGE_SELF,&r0); clock_gettime(CLOCK_MONOTONIC,&t0);
  long bytes=0;
  for(int i=0;i<n;i++){
    if(!strcmp(mode,"s")){struct stat st; fstatat(dfd,names[i],&st,0); continue;}
    int fd=openat(dfd,names[i],O_RDONLY|O_DIRECT|O_CLOEXEC|O_NOATIME);
    if(fd<0){perror("open");return 1;}
    if(strstr(mode,"f")){struct stat st; fstat(fd,&st);} 
    if(strstr(mode,"r")){ long r=pread(fd,buf,atoi(getenv("LEN")),0); bytes+=r;}
    close(fd);
  }
  clock_gettime(CLOCK_MONOTONIC,&t1); getrusage(RUSAGE_SELF,&r1);
  double sys=tv(r1.ru_stime)-tv(r0.ru_stime), usr=tv(r1.ru_utime)-tv(r0.ru_utime);
  double wall=(t1.tv_sec-t0.tv_sec)+(t1.tv_nsec-t0.tv_nsec)/1e9;
  printf("%-4s files %d wall %.3f s  sys %.3f s  usr %.3f  sys/file %.2f us  => at 64 KiB/file: %.3f s/GiB sys\n",mode,n,wall,sys,usr,sys/n*1e6, sys/n*16384);
  return 0;}
