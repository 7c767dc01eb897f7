/* How long touching a small buffer takes right after touching it, and after the thread has
 * spun for a while (0.1-50 ms) without touching it: the cache refill a batch-1 call pays
 * when requests arrive apart (README, "Requests that arrive apart"). One thread, median of 50.
 *
 *     gcc -O2 benchmarks/cache_refill.c -o /tmp/cache_refill && /tmp/cache_refill 64 && /tmp/cache_refill 512
 *
 * Argument: kilobytes touched (one float per 64-byte line). On the Zen 4 VM of 2026-12-02,
 * 06:55 (other processes busy): 64 KB 0.9 us back to back, 6.3 us after 4 ms, 7.0 after 10
 * ms; 512 KB 6.7 -> 46-50 us. At 07:51 (a test run on the other core): 64 KB 0.9 -> 1.2
 * (4 ms), 1.6-2.3 (10 ms), 2.5-3.3 us (50 ms). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  size_t n = (size_t)atoi(argv[1])*1024/4; float*a=malloc(n*4); for(size_t i=0;i<n;i++)a[i]=i;
  double gaps[]={0,0.0001,0.001,0.004,0.01,0.05};
  for(int g=0; g<6; g++){
    double ts[50]; volatile float s=0;
    for(int r=0;r<50;r++){
      double t0=now(); while(now()-t0<gaps[g]); 
      double t1=now(); float acc=0; for(size_t i=0;i<n;i+=16) acc+=a[i]; s+=acc; ts[r]=now()-t1;
    }
    // median
    for(int i=0;i<50;i++)for(int j=i+1;j<50;j++)if(ts[j]<ts[i]){double t=ts[i];ts[i]=ts[j];ts[j]=t;}
    printf("%s KB, spin gap %.1f ms: touch %.1f us\n", argv[1], gaps[g]*1e3, ts[25]*1e6);
  }
}
