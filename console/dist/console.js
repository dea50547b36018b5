document.getElementById("app").textContent = "KUBE console";
