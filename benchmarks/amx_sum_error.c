/* The sum error of AMX TDPBF16PS against a VDPBF16PS chain (README, "On AMX tiles"):
   1,024 sums of 512 bfloat16 products, each error from the exact (float64) sum divided by
   the sum of the products magnitudes, averaged. Needs AMX-BF16 and Linux 5.16+.
     gcc -O2 benchmarks/amx_sum_error.c -o /tmp/amx_sum_error -lm && /tmp/amx_sum_error */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <time.h>
#include <math.h>
static unsigned bf(float f){unsigned u;memcpy(&u,&f,4);return (u+0x7fffu+((u>>16)&1u))>>16;}
typedef struct { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg_t;
__attribute__((target("amx-tile,amx-bf16,avx512f")))
void amx(const unsigned* A, int KK, const unsigned* P, float* C, int ldc) {
  /* A: 32 rows x KK words; P: panel 32 cols, KK rows of 32 words; C 32x32 */
  cfg_t c; memset(&c,0,sizeof c); c.palette=1;
  for(int t=0;t<8;t++){c.rows[t]=16;c.colsb[t]=64;}
  _tile_loadconfig(&c);
  _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
  for(int k=0;k<KK;k+=16){
    _tile_loadd(4, A + k, KK*4);
    _tile_loadd(5, A + 16*KK + k, KK*4);
    _tile_loadd(6, P + k*32, 128);
    _tile_loadd(7, P + k*32 + 16, 128);
    _tile_dpbf16ps(0,4,6);_tile_dpbf16ps(1,4,7);_tile_dpbf16ps(2,5,6);_tile_dpbf16ps(3,5,7);
  }
  _tile_stored(0, C, ldc*4);_tile_stored(1, C+16, ldc*4);_tile_stored(2, C+16*ldc, ldc*4);_tile_stored(3, C+16*ldc+16, ldc*4);
  _tile_release();
}
__attribute__((target("avx512f,avx512bf16")))
void dp(const unsigned* A, int KK, const unsigned* P, float* C, int ldc){
  for(int r=0;r<32;r++) for(int h=0;h<2;h++){
    __m512 a=_mm512_setzero_ps();
    for(int k=0;k<KK;k++){ a=_mm512_dpbf16_ps(a,(__m512bh)_mm512_set1_epi32(A[r*KK+k]),(__m512bh)_mm512_loadu_si512(P+k*32+16*h)); }
    _mm512_storeu_ps(C+r*ldc+16*h,a);
  }
}
int main(){
  long r = syscall(SYS_arch_prctl, 0x1023, 18); printf("perm %ld\n", r);
  int KK=256; unsigned *A=aligned_alloc(64,32*KK*4), *P=aligned_alloc(64,32*KK*4);
  srand(1); float sc=1;
  for(int trial=0;trial<3;trial++){
  for(int i=0;i<32*KK;i++){ float x=(rand()/(float)RAND_MAX-0.5f)*sc, y=(rand()/(float)RAND_MAX-0.5f)*sc; A[i]=bf(x)|(bf(y)<<16);
    float w=(rand()/(float)RAND_MAX-0.5f), v=(rand()/(float)RAND_MAX-0.5f)*1e-3f; P[i]=bf(w)|(bf(v)<<16);}
  float C1[32*32],C2[32*32]; amx(A,KK,P,C1,32); dp(A,KK,P,C2,32);
  double e1=0,e2=0,sc1=0;
  for(int r=0;r<32;r++)for(int c=0;c<32;c++){ double ex=0, ab=0; for(int k=0;k<KK;k++){ unsigned a=A[r*KK+k], w=P[k*32+c]; float a0,a1,w0,w1; unsigned t;
     t=a<<16; memcpy(&a0,&t,4); t=a&0xffff0000u; memcpy(&a1,&t,4); t=w<<16; memcpy(&w0,&t,4); t=w&0xffff0000u; memcpy(&w1,&t,4);
     ex+=(double)a0*w0+(double)a1*w1; ab+=fabs((double)a0*w0)+fabs((double)a1*w1);}
     e1+=fabs(C1[r*32+c]-ex)/ab; e2+=fabs(C2[r*32+c]-ex)/ab; }
  printf("trial %d mean err/scale: amx %.3g dp %.3g\n",trial,e1/1024,e2/1024); sc*=100;}
  return 0;
}
